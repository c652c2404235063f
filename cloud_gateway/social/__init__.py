"""Social commerce (issue 19): group buys and price-cut help, formed exactly at the gateway."""
