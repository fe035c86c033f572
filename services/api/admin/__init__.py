"""The admin web UI under /admin/: identity (login, roles, CSRF) and the pages."""
