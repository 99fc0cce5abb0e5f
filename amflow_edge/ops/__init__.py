"""Running and looking after a station: the doctor, the watchdog, systemd notifications, logging."""
