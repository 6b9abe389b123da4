-- The egress a message asked for itself (o:sending-ip -> 'ip:<address>', o:sending-ip-pool -> 'pool:<id>'),
-- copied onto each of its recipients at accept so the relay's claim can leave mail pinned to another relay
-- host's IP to that host without reading the message row. NULL: the domain's IPs or the shared pool decide.
ALTER TABLE recipients ADD COLUMN egress_pin text;
