-- wrk script for bench/relay_vs_postfix.py: POSTs distinct ~5 KB messages to Envoi's HTTP API.
--
-- Settings come from the environment (the harness sets them):
--   BENCH_KIND     urlencoded | multipart | attachment | mime
--   BENCH_DOMAIN   sending domain (/v3/<domain>/messages[.mime])
--   BENCH_AUTH     the Authorization header value
--   BENCH_N        requests in all (split between the threads); each thread stops after its share
--   BENCH_THREADS  wrk's -t (to split BENCH_N)
--   BENCH_RUN      tag / Message-ID prefix of this run
--   BENCH_DONE     directory where each thread drops a marker file when its share is answered
--   BENCH_DELAY_MS optional delay before each request of a connection (pacing: connections / rate)
--   BENCH_HTML     optional HTML body sent beside the text (mime: as multipart/alternative)
-- Recipients go to 1,000 domains (rcpt<i>@d<i mod 1000>.example.net), as in make_messages().

local kind = os.getenv("BENCH_KIND") or "urlencoded"
local domain = os.getenv("BENCH_DOMAIN")
local auth = os.getenv("BENCH_AUTH")
local total = tonumber(os.getenv("BENCH_N"))
local nthreads = tonumber(os.getenv("BENCH_THREADS"))
local run = os.getenv("BENCH_RUN")
local donedir = os.getenv("BENCH_DONE")
local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local html = os.getenv("BENCH_HTML") or ""

local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local line = "Thank you for your order. Your parcel is on its way and will arrive soon.\r\n"
local text = string.rep(line, 66)  -- ~5 KB
local boundary = "envoiwrk" .. (run or "x")
local attachment = string.rep("%PDF-1.4 invoice bytes 0123456789abcdef\n", 50)  -- ~2 KB

local function urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", string.byte(c)) end))
end

local text_enc = urlencode(text)
local tag_enc = urlencode(run)
local from_enc = urlencode("Bench <bench@" .. domain .. ">")
local html_enc = (html ~= "") and ("&html=" .. urlencode(html)) or ""

local function part(name, value)
  return "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"" .. name .. "\"\r\n\r\n" .. value .. "\r\n"
end

local path, ctype, share, issued, answered

function init(args)
  share = math.floor(total / nthreads) + ((id < total % nthreads) and 1 or 0)
  issued, answered = 0, 0
  path = "/v3/" .. domain .. ((kind == "mime") and "/messages.mime" or "/messages")
  if kind == "urlencoded" then
    ctype = "application/x-www-form-urlencoded"
  else
    ctype = "multipart/form-data; boundary=" .. boundary
  end
end

local function body(i)
  local rcpt = "rcpt" .. i .. "@d" .. string.format("%03d", i % 1000) .. ".example.net"
  local subject = "Bench message " .. i
  if kind == "urlencoded" then
    return "from=" .. from_enc .. "&to=" .. urlencode(rcpt) .. "&subject=" .. urlencode(subject)
      .. "&text=" .. text_enc .. "&o%3Atag=" .. tag_enc .. html_enc
  end
  if kind == "mime" then
    local raw = "From: Bench <bench@" .. domain .. ">\r\nTo: <" .. rcpt .. ">\r\nSubject: " .. subject
      .. "\r\nMessage-ID: <" .. run .. "." .. i .. "@" .. domain .. ">\r\nMIME-Version: 1.0\r\n"
    if html ~= "" then
      raw = raw .. "Content-Type: multipart/alternative; boundary=\"alt-wrk\"\r\n\r\n"
        .. "--alt-wrk\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" .. text
        .. "--alt-wrk\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" .. html .. "--alt-wrk--\r\n"
    else
      raw = raw .. "Content-Type: text/plain; charset=utf-8\r\n\r\n" .. text
    end
    return part("to", rcpt)
      .. "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"message\"; filename=\"m.eml\"\r\n"
      .. "Content-Type: message/rfc822\r\n\r\n" .. raw .. "\r\n--" .. boundary .. "--\r\n"
  end
  local b = part("from", "Bench <bench@" .. domain .. ">") .. part("to", rcpt) .. part("subject", subject)
    .. part("text", text) .. part("o:tag", run)
  if html ~= "" then
    b = b .. part("html", html)
  end
  if kind == "attachment" then
    b = b .. "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"invoice.pdf\"\r\n"
      .. "Content-Type: application/pdf\r\n\r\n" .. attachment .. "\r\n"
  end
  return b .. "--" .. boundary .. "--\r\n"
end

function request()
  -- each thread numbers its own requests: thread t sends t, t + nthreads, t + 2 * nthreads, ...
  local i = id + issued * nthreads
  issued = issued + 1
  return wrk.format("POST", path, {["Authorization"] = auth, ["Content-Type"] = ctype}, body(i))
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function response(status, headers, b)
  answered = answered + 1
  if answered == share then
    local f = io.open(donedir .. "/done-" .. id, "w")
    f:write(tostring(answered))
    f:close()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  io.write(string.format(
    "ENVOI_WRK {\"requests\": %d, \"non2xx\": %d, \"socket_errors\": %d, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f}\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
