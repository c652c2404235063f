"""The gateway's keys, trust file and operator tokens."""
