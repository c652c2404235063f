"""The household on the LAN (issue 17): membership, discovery, election, coordinator, client."""
