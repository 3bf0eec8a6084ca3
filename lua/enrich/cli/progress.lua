-- Progress on stderr: on a terminal one status line redrawn in place;
-- otherwise a plain line every few seconds; a summary at the end.
local core = require "enrich.core"

local floor, max, format, concat, ipairs, pairs = math.floor, math.max, string.format, table.concat, ipairs, pairs

local _M = { _VERSION = "0.1.0" }

_M.TTY_INTERVAL = 0.2       -- seconds between redraws on a terminal
_M.LOG_INTERVAL = 5         -- seconds between lines otherwise

local P = {}
P.__index = P

--- out: a file (io.stderr); now: a clock in seconds; tty: force (tests).
function _M.new(opts)
  local out = opts.out or io.stderr
  local tty = opts.tty
  if tty == nil then tty = core.isatty(2) end
  return setmetatable({ out = out, now = opts.now or core.now, tty = tty, limit = opts.limit,
                        started = (opts.now or core.now)(), last = -1e9, drawn = false }, P)
end

local function duration(s)
  s = floor(s + 0.5)
  if s < 60 then return s .. "s" end
  if s < 3600 then return format("%dm%02ds", floor(s / 60), s % 60) end
  return format("%dh%02dm", floor(s / 3600), floor(s % 3600 / 60))
end
_M.duration = duration

local function num(x)
  if x == floor(x) then return format("%d", x) end
  return format("%.1f", x)
end

--- The status line for stats (waterfall stats) and charged credits.
function P:line(stats, charged)
  local elapsed = max(self.now() - self.started, 1e-6)
  local done, total = stats.done_rows, stats.rows
  local found = done > 0 and floor(100 * stats.found_rows / done + 0.5) or 0
  local parts = {
    format("rows %d/%d", done, total),
    format("found %d%%", found),
    "credits " .. num(charged) .. (self.limit and ("/" .. num(self.limit)) or ""),
    elapsed >= 1 and format("%.1f req/s", (stats.requests + (stats.requests_live or 0)) / elapsed) or "- req/s",
  }
  if done > 0 and done < total and elapsed >= 1 then
    parts[#parts + 1] = "ETA " .. duration((total - done) * elapsed / done)
  end
  return concat(parts, " | ")
end

--- Redraws (terminal) or logs (every LOG_INTERVAL) when it is time.
function P:update(stats, charged, force)
  local t = self.now()
  local every = self.tty and _M.TTY_INTERVAL or _M.LOG_INTERVAL
  if not force and t - self.last < every then return end
  self.last = t
  local text = self:line(stats, charged)
  if self.tty then
    self.out:write("\r\27[K", text)
    self.drawn = true
  else
    self.out:write("enrich: ", text, "\n")
  end
  self.out:flush()
end

--- Ends the status line (so what follows starts on a fresh line).
function P:close()
  if self.drawn then self.out:write("\r\27[K"); self.out:flush(); self.drawn = false end
end

--- The summary: rows by status, credits by provider (and how many of them
--- an earlier invocation of the same run paid), elapsed.
function P:summary(outcomes, by_provider, names, earlier)
  self:close()
  local counts, order = {}, { "found", "not_found", "failed", "skipped", "unknown" }
  for _, o in ipairs(outcomes) do counts[o.status] = (counts[o.status] or 0) + 1 end
  local rows = {}
  for _, s in ipairs(order) do
    if counts[s] then rows[#rows + 1] = s .. " " .. counts[s] end
  end
  local credits, total = {}, 0
  for _, name in ipairs(names) do
    local c = by_provider[name] or 0
    total = total + c
    credits[#credits + 1] = name .. " " .. num(c)
  end
  for name, c in pairs(by_provider) do
    local listed = false
    for _, n in ipairs(names) do listed = listed or n == name end
    if not listed then credits[#credits + 1] = name .. " " .. num(c); total = total + c end
  end
  self.out:write(format("enrich: %d rows: %s\n", #outcomes, #rows > 0 and concat(rows, ", ") or "none"))
  earlier = earlier or 0
  local split = ""
  if earlier > 0 then
    split = format("; %s paid before this invocation (the same run), %s now", num(earlier), num(total - earlier))
  end
  self.out:write(format("enrich: credits %s%s (%s)%s\n", num(total), self.limit and (" of " .. num(self.limit)) or "",
                        concat(credits, ", "), split))
  self.out:write(format("enrich: elapsed %s\n", duration(self.now() - self.started)))
  self.out:flush()
end

return _M
