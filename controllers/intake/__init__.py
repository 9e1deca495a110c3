"""The intake API (``manticore-api``): the front door users press the button on.

Stateless: everything it knows comes from Consul, through one blocking query per KV prefix it
reads (:mod:`.cache`), shared by every request and every open event stream of the process, so
any number of instances serve any user and a restart loses nothing. Its only writes are the
user's own request key (created with CAS, activity recorded on it, deleted on departure) and its
own registration as the web app service.

``models`` (what the API speaks), ``auth`` (the JWT), ``cache`` (the warm caches and the event
fan-out), ``app`` (the routes), ``registration`` (Consul service), ``server`` (the process).
"""
