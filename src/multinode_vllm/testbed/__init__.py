"""The simulated cluster: systemd node containers on one machine (see README, "Test bed")."""
