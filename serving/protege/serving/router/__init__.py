"""Routing calls to specialists: task matching, the routing table, answer checks, the router."""
