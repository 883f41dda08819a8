"""PostgreSQL plumbing shared by the services: engine, shared tables, offsets and outbox."""
