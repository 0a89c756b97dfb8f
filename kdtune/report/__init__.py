"""Reports: read experiment folders, compute the statistics, write tables and figures; never starts Ray."""
