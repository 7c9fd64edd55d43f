"""SMTP server fixtures (aiosmtpd on loopback); filled in by the mailer work."""
