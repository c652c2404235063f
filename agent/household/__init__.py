"""The household on the LAN (issue 17): membership, discovery, election, the coordinator's
LAN API and the client every device runs."""
