"""The fault harness: real ``trigmail serve`` processes killed at seeded moments, checked
against an oracle computed from the events fed and a deliberately simple rule set."""
