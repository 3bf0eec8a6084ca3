-- Reading the input file and writing the output: CSV through enrich.core
-- (libcsv), JSON lines through lua-cjson. A file-level fault (not CSV, a row
-- with more fields than the header, invalid UTF-8, a JSON line that is not an
-- object) refuses the whole run before anything is sent, with the line: the
-- file is probably not what the user thinks it is, and paying for rows read
-- from a misparsed file is worse than fixing the file and running again.
local core = require "enrich.core"
local cjson = require "cjson.safe"

local open, type, tostring, ipairs, pairs, concat, rename, remove =
  io.open, type, tostring, ipairs, pairs, table.concat, os.rename, os.remove

local _M = { _VERSION = "0.1.0" }

local CHUNK = 65536

-- The columns this command adds, in order, and their JSON names.
_M.ENRICH_COLUMNS = { "enrich_status", "enrich_provider", "enrich_email", "enrich_email_status",
                      "enrich_phone", "enrich_credits", "enrich_error" }
local JSON_NAMES = { "status", "provider", "email", "email_status", "phone", "credits", "error" }

local function fault(path, line, msg)
  return nil, path .. (line and (":" .. line) or "") .. ": " .. msg
end

local function read_csv(path, f)
  local p = core.csv_parser { strict = true, utf8 = true }
  local data = { format = "csv", rows = {}, lines = {} }
  local header, width, digest, first
  local function take(rows, lines)
    for k, r in ipairs(rows) do
      if not header then
        header, width = r, #r
      else
        if #r > width then
          return fault(path, lines[k], "row has " .. #r .. " fields, the header has " .. width)
        end
        for i = #r + 1, width do r[i] = "" end      -- short rows: missing fields are empty
        data.rows[#data.rows + 1] = r
        data.lines[#data.lines + 1] = lines[k]
      end
    end
    return true
  end
  while true do
    local chunk = f:read(CHUNK)
    if not chunk then break end
    if not first then
      first = chunk
      -- Write the output with the input's line ends.
      data.eol = first:match("^[^\n]*\r\n") and "\r\n" or "\n"
    end
    digest = core.digest(chunk, digest)
    local rows, lines, line = p:feed(chunk)
    if not rows then p:close(); return fault(path, line, lines) end
    local ok, err = take(rows, lines)
    if not ok then p:close(); return nil, err end
  end
  local rows, lines, line = p:finish()
  p:close()
  if not rows then return fault(path, line, lines) end
  local ok, err = take(rows, lines)
  if not ok then return nil, err end
  if not header then return fault(path, nil, "empty file: a CSV needs a header row") end
  data.columns, data.digest = header, digest or core.digest("")
  data.eol = data.eol or "\n"
  return data
end

local function read_jsonl(path, f)
  local data = { format = "jsonl", rows = {}, lines = {}, raw = {}, columns = {} }
  local seen, digest, n = {}, nil, 0
  for line in f:lines() do
    n = n + 1
    digest = core.digest(line .. "\n", digest)
    local text = line:gsub("\r$", "")
    if n == 1 then text = text:gsub("^\239\187\191", "") end
    if text:match("%S") then
      local ok, pos = core.utf8_check(text)
      if not ok then return fault(path, n, "invalid UTF-8 (or a NUL byte) at byte " .. pos) end
      local obj, err = cjson.decode(text)
      if type(obj) ~= "table" or not text:match("^%s*{") then
        return fault(path, n, "not a JSON object" .. (err and (": " .. err) or ""))
      end
      for k in pairs(obj) do
        if not seen[k] then seen[k] = true; data.columns[#data.columns + 1] = k end
      end
      data.rows[#data.rows + 1] = obj
      data.lines[#data.lines + 1] = n
      data.raw[#data.raw + 1] = text
    end
  end
  table.sort(data.columns)                      -- cjson keeps no order: a stable one
  data.digest = digest or core.digest("")
  data.eol = "\n"
  return data
end

--- Reads a whole input file. -> data | nil, "path:line: message"
---   data.columns  header names (CSV) or every key seen (JSON lines)
---   data.rows     CSV: arrays of strings, as wide as the header; JSONL: objects
---   data.lines    the line each row starts on; data.digest  the file's digest
function _M.read(path, format)
  local f, err = open(path, "rb")
  if not f then return nil, tostring(err) end
  local data, msg
  if format == "csv" then data, msg = read_csv(path, f) else data, msg = read_jsonl(path, f) end
  f:close()
  return data, msg
end

-- A JSON value as a CSV field.
local function field(v)
  if v == nil or v == cjson.null then return "" end
  local t = type(v)
  if t == "string" then return v end
  if t == "number" or t == "boolean" then return tostring(v) end
  return cjson.encode(v) or ""
end

--- The enrich_* values of a row's outcome, in ENRICH_COLUMNS order.
local function enrich_values(o)
  local credits = o.credits or 0
  if credits == math.floor(credits) then credits = ("%d"):format(credits) else credits = ("%.4g"):format(credits) end
  return { o.status or "", o.provider or "", o.email or "", o.email_status or "", o.phone or "",
           credits, o.error or "" }
end

--- The input column, if any, that the output in `format` would add itself
--- (DESIGN's output contract owns these names): "enrich" in JSON lines,
--- an enrich_* column in CSV (compared as a CSV reader would: trimmed,
--- any case). -> column name | nil
function _M.taken_column(data, format)
  for _, c in ipairs(data.columns) do
    if format == "jsonl" then
      if c == "enrich" then return c end
    else
      local low = c:match("^%s*(.-)%s*$"):lower()
      for _, name in ipairs(_M.ENRICH_COLUMNS) do
        if low == name then return c end
      end
    end
  end
  return nil
end

--- Writes every input row, in order, with its outcome, to `path` (through a
--- temporary file and a rename, so a reader never sees half an output).
function _M.write(path, format, data, outcomes)
  local tmp = path .. ".tmp"
  local f, err = open(tmp, "wb")
  if not f then return nil, tostring(err) end
  local buf, nbuf = {}, 0
  local function put(s)
    nbuf = nbuf + 1; buf[nbuf] = s
    if nbuf >= 512 then f:write(concat(buf, "", 1, nbuf)); nbuf = 0 end
  end
  if format == "csv" then
    local header = {}
    for i, c in ipairs(data.columns) do header[i] = c end
    for _, c in ipairs(_M.ENRICH_COLUMNS) do header[#header + 1] = c end
    put(core.csv_format(header, data.eol))
    for i, row in ipairs(data.rows) do
      local out = {}
      if data.format == "csv" then
        for k = 1, #row do out[k] = row[k] end
      else
        for k, c in ipairs(data.columns) do out[k] = field(row[c]) end
      end
      for _, v in ipairs(enrich_values(outcomes[i])) do out[#out + 1] = v end
      put(core.csv_format(out, data.eol))
    end
  else
    -- Objects are written key by key, so their keys keep an order (a Lua
    -- table would not): the CSV header's, and DESIGN's for the enrich object.
    local names = {}
    for k, name in ipairs(JSON_NAMES) do names[k] = cjson.encode(name) .. ":" end
    local columns = {}
    for k, c in ipairs(data.columns) do columns[k] = cjson.encode(c) .. ":" end
    for i, row in ipairs(data.rows) do
      local vals, parts = enrich_values(outcomes[i]), {}
      vals[6] = outcomes[i].credits or 0
      for k, name in ipairs(names) do parts[k] = name .. (cjson.encode(vals[k]) or '""') end
      local tail = "{" .. concat(parts, ",") .. "}"
      if data.format == "jsonl" then
        -- The input line untouched, the enrich object spliced in at its end.
        local raw = data.raw[i]:gsub("%s*$", "")
        local body = raw:sub(1, -2)
        put(body .. (body:match("^%s*{%s*$") and "" or ",") .. '"enrich":' .. tail .. "}\n")
      else
        local fields = {}
        for k, name in ipairs(columns) do fields[k] = name .. (cjson.encode(row[k] or "") or '""') .. "," end
        put("{" .. concat(fields) .. '"enrich":' .. tail .. "}\n")
      end
    end
  end
  if nbuf > 0 then f:write(concat(buf, "", 1, nbuf)) end
  local ok, werr = f:close()
  if not ok then remove(tmp); return nil, tostring(werr) end
  local rok, rerr = rename(tmp, path)
  if not rok then remove(tmp); return nil, tostring(rerr) end
  return true
end

return _M
