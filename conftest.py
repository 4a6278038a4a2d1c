"""Load the zdtm scenario runner plugin (options, scenario collection, summary, leak guard),
and pytester for the runner's own plugin-level tests."""

pytest_plugins = ["zdtm.plugin", "pytester"]
