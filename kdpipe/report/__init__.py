"""Reports: versioned report.json, report.md, and the terminal summary."""
