"""Projects (tenants), images and containers across the fleet."""
