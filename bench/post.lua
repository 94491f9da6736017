-- wrk script: POST one JSON body (read from a file) with the API key, keep the task id of
-- every 200, and write a JSON summary. Configured through the environment:
--   BENCH_BODY  path of the request body        BENCH_KEY  value of x-freepik-api-key
--   BENCH_OUT   where the JSON summary goes     BENCH_IDS  where the task ids go (one a line)

local threads = {}

local body_file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()
wrk.headers["content-type"] = "application/json"
wrk.headers["x-freepik-api-key"] = os.getenv("BENCH_KEY")

function setup(thread)
   table.insert(threads, thread)
end

ids = {}
ok = 0

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
      local id = string.match(body, '"task_id":"([^"]+)"')
      if id then
         ids[#ids + 1] = id
      end
   end
end

function done(summary, latency, requests)
   local ok_total, ids_out = 0, assert(io.open(os.getenv("BENCH_IDS"), "w"))
   for _, thread in ipairs(threads) do
      ok_total = ok_total + thread:get("ok")
      for _, id in ipairs(thread:get("ids")) do
         ids_out:write(id, "\n")
      end
   end
   ids_out:close()
   local errors = summary.errors
   local out = assert(io.open(os.getenv("BENCH_OUT"), "w"))
   out:write(string.format(
      '{"seconds": %.6f, "requests": %d, "ok": %d, "non_2xx": %d, "socket_errors": %d, '
         .. '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f}\n',
      summary.duration / 1e6, summary.requests, ok_total, errors.status,
      errors.connect + errors.read + errors.write + errors.timeout,
      latency:percentile(50) / 1e3, latency:percentile(90) / 1e3,
      latency:percentile(99) / 1e3, latency.max / 1e3))
   out:close()
end
