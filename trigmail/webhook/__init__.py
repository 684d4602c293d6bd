"""SendGrid's signed Event Webhook: evidence of what the provider did with each email.

``signature`` checks a request's signature and bounds, ``events`` turns its body into
:class:`~trigmail.webhook.events.DeliveryEvent` values, ``receiver`` answers one request
(durable before 2xx), ``listener`` serves it over HTTP, and ``reconcile`` settles in-doubt
sends by that evidence (docs/webhook.md, docs/design.md).
"""
