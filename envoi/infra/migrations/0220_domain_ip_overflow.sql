-- Per-domain policy for mail pinned to another relay host's IPs when that host is down or far behind:
-- 'overflow' (other hosts take it after a whole lease, over their shared pool) or 'wait' (only its host
-- sends it). NULL: the relay's ENVOI_WARMUP_POLICY.
ALTER TABLE domains ADD COLUMN ip_overflow text CHECK (ip_overflow IN ('overflow', 'wait'));
