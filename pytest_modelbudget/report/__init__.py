"""Words for typed results: failure lines, warnings, the summary table, JSON, Markdown, JUnit,
HTML and the profile. Generators of lines and JSON-able documents; the caller writes them."""
