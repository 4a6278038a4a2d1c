"""Load the zdtm scenario runner plugin (options, scenario collection, summary, leak guard)."""

pytest_plugins = ["zdtm.plugin"]
