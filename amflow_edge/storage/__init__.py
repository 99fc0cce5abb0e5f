"""What lives on disk: scan directories and records, the station database, backup and disk space."""
