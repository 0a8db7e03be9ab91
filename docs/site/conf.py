"""Sphinx configuration of the mseg.fleet docs site (``make docs``).

The Makefile stages the sources in .build/docs/src: the pages antsibull-docs generates from the plugins' and roles'
documentation under collection/, and the Markdown pages of docs/ (read with myst-parser) beside index.md.
Nothing here reaches the network: no intersphinx, so a build on a machine without internet gives the same result.
"""

# The labels of the Ansible docsite that antsibull-docs' pages refer to (ANSIBLE_DOCS_LABELS), linked to their pages
# there; any other unresolved reference stays a warning, and -W makes it an error.
ANSIBLE_DOCS = "https://docs.ansible.com/projects/ansible/devel/"
ANSIBLE_DOCS_LABELS = {
    "action_plugins": ("plugins/action.html", "action plugins"),
    "ansible_configuration_settings": ("reference_appendices/config.html", "Ansible configuration settings"),
    "common_return_values": ("reference_appendices/common_return_values.html", "common return values"),
}

project = "mseg.fleet"
copyright = "mseg.fleet developers"  # pylint: disable=redefined-builtin
title = "mseg.fleet documentation"
html_short_title = "mseg.fleet"

extensions = ["myst_parser", "sphinx_antsibull_ext"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"

# GitHub-style anchors for the Markdown pages' links to their own sections (discovery.md: [...](#packet-captures)).
myst_heading_anchors = 3

pygments_style = "ansible"
# Code blocks without a language (error messages, command output) stay plain text; the generated pages name theirs.
highlight_language = "none"

html_theme = "sphinx_ansible_theme"
html_show_sphinx = False
html_copy_source = False
html_use_modindex = False
html_use_index = False

# Every reference must resolve: the Makefile builds with -W, so a broken link fails the build.
default_role = "any"
nitpicky = True


def _ansible_docs_reference(app, env, node, contnode):  # pylint: disable=unused-argument
    """Resolve a reference to a label of ANSIBLE_DOCS_LABELS to a link into the Ansible docsite."""
    from docutils import nodes  # pylint: disable=import-outside-toplevel

    if node.get("refdomain") != "std" or node.get("reftarget") not in ANSIBLE_DOCS_LABELS:
        return None
    page, text = ANSIBLE_DOCS_LABELS[node["reftarget"]]
    link = nodes.reference("", "", internal=False, refuri=ANSIBLE_DOCS + page)
    link += contnode if node.get("refexplicit") else nodes.Text(text)
    return link


def setup(app):
    """Sphinx hook: link the Ansible docsite's labels."""
    app.connect("missing-reference", _ansible_docs_reference)
