# Copyright: mseg.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``mseg-cli completion bash``: a bash completion script built from the parser itself, so it never lists a verb or
an option the command does not have."""

import argparse

SCRIPT = """# bash completion for mseg-cli: eval "$(mseg-cli completion bash)", or save it under
# /etc/bash_completion.d/mseg-cli
_mseg_cli() {
    local cur path word i
    cur="${COMP_WORDS[COMP_CWORD]}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        case "$word" in -*) continue ;; esac
        case " $(_mseg_cli_words "$path") " in *" $word "*) path="${path:+$path }$word" ;; esac
    done
    COMPREPLY=($(compgen -W "$(_mseg_cli_words "$path")" -- "$cur"))
}
_mseg_cli_words() {
    case "$1" in
%s
    esac
}
complete -F _mseg_cli mseg-cli
"""


def _walk(parser, path, table):
    words = []
    for action in parser._actions:  # pylint: disable=protected-access  # argparse offers no public walk
        if isinstance(action, argparse._SubParsersAction):  # pylint: disable=protected-access
            for name, sub in action.choices.items():
                words.append(name)
                _walk(sub, path + [name], table)
        elif action.option_strings:
            words.extend(o for o in action.option_strings if o.startswith("--"))
        elif action.choices:
            words.extend(action.choices)
    table[" ".join(path)] = sorted(words)


def bash(parser):
    table = {}
    _walk(parser, [], table)
    cases = "\n".join('        "%s") echo "%s" ;;' % (path, " ".join(words)) for path, words in sorted(table.items()))
    return SCRIPT % cases
