"""Loaded through PYTHONPATH as sitecustomize: records every file that Python opens or imports under the checkout.

The artifact tests run the product from the installed tarball; if anything of the product were still read from the
checkout (a module, a module_util, a template, the inventory), this hook names it in MSEG_GUARD_LOG. The hook is
inherited by Ansible's forked workers and installed again in every Python that the modules start, since they get
the same environment.
"""
import os
import sys

_ROOT = os.environ.get("MSEG_GUARD_ROOT")
_ALLOWED = [p for p in os.environ.get("MSEG_GUARD_ALLOW", "").split(os.pathsep) if p]
_LOG = os.environ.get("MSEG_GUARD_LOG")


def _hook(event, args):
    if event not in ("open", "import") or not args:
        return
    path = args[0] if event == "open" else (args[1] if len(args) > 1 else None)
    if not isinstance(path, str) or not path:
        return
    real = os.path.realpath(path)
    if real != _ROOT and not real.startswith(_ROOT + os.sep):
        return
    if any(real == a or real.startswith(a + os.sep) for a in _ALLOWED):
        return
    with open(_LOG, "a", encoding="utf-8") as log:
        log.write("%s %s (pid %d)\n" % (event, real, os.getpid()))


if _ROOT and _LOG:
    sys.addaudithook(_hook)
