-- wrk script for bench.py.
--   BENCH_BODY_BYTES > 0: POST a body of that many bytes (built once).
--   BENCH_STALE_AFTER_S > 0: count requests still unanswered at the end that were sent more than that long ago
--     (a lower bound: sent before the cutoff minus all completed). wrk itself only counts a timeout when a late
--     response does arrive, so a proxy that never answers would otherwise show no errors at all.
-- done() prints one line: BENCH_JSON {...}.
local body_bytes = tonumber(os.getenv("BENCH_BODY_BYTES") or "0") or 0
local stale_after = tonumber(os.getenv("BENCH_STALE_AFTER_S") or "0") or 0
if body_bytes > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("x", body_bytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_usec; } bench_timeval;
  int gettimeofday(bench_timeval *tv, void *tz);
]]
local tv = ffi.new("bench_timeval")
local function now()
  ffi.C.gettimeofday(tv, nil)
  return tonumber(tv.tv_sec) + tonumber(tv.tv_usec) / 1e6
end

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

if stale_after > 0 then
  local raw
  sent_bins = {} -- 100 ms bins of send times, read back by done() through thread:get
  function init(args)
    raw = wrk.format()
  end
  function request()
    local bin = math.floor(now() * 10)
    sent_bins[bin] = (sent_bins[bin] or 0) + 1
    return raw
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  local sent_before_cutoff, sent = 0, 0
  if stale_after > 0 then
    local cutoff = math.floor((now() - stale_after) * 10)
    for _, t in ipairs(threads) do
      for bin, n in pairs(t:get("sent_bins")) do
        sent = sent + n
        if bin < cutoff then sent_before_cutoff = sent_before_cutoff + n end
      end
    end
  end
  local stale = math.max(0, sent_before_cutoff - summary.requests)
  io.write(string.format(
    'BENCH_JSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
      .. '"status":%d,"timeout":%d,"unanswered":%d,"sent":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    stale, sent, latency:percentile(50), latency:percentile(99)))
end
