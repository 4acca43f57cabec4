"""chronotick-mcp: MCP tools for AI agents over the chronotickd socket (no numpy, no torch)."""
