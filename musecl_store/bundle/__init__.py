"""The city bundle (docs/city-bundle.md): one reader per bundle file, the problems report,
and the content hashes that tell an unchanged bundle from a changed one."""
