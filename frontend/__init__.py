"""The browser UI: views and templates over the hosts and containers services. No models."""
