-- Rows -> what each provider is sent. The columns DESIGN.md names are read
-- (case-insensitively, trimmed); every other column only travels through.
-- Whether a row has what a provider needs is the provider's own prepare()
-- that client:submit would run, so the command never second-guesses it.
local providers = require "enrich.providers"

local type, ipairs, tostring = type, ipairs, tostring

local _M = { _VERSION = "0.1.0" }

local PERSON = { "first_name", "last_name", "full_name", "company", "domain", "linkedin_url", "email" }
-- Providers that enrich their own entities: the id column they read.
local ID_COLUMN = { instaview = "instaview_id", lance = "lance_id", puffle = "puffle_id" }
_M.ID_COLUMN = ID_COLUMN

local KNOWN = { id = true, text = true }
for _, c in ipairs(PERSON) do KNOWN[c] = true end
for _, c in pairs(ID_COLUMN) do KNOWN[c] = true end

-- What a provider needs, for the message when no column could ever serve it.
local NEEDS = {
  tamtam = "first_name/last_name, full_name or linkedin_url",
  instaview = "instaview_id or id", lance = "lance_id or id", puffle = "puffle_id or id",
  parsetx = "text",
}

local function str(v)
  if v == nil then return nil end
  local t = type(v)
  if t == "number" then
    -- JSON numbers decode as floats on Lua 5.4: 12345 would read "12345.0",
    -- a wrong id (paid for all the same).
    if v == math.floor(v) and math.abs(v) < 2^53 then v = ("%d"):format(v) else v = tostring(v) end
  elseif t ~= "string" then
    return nil
  end
  v = v:match("^%s*(.-)%s*$")
  if v == "" then return nil end
  return v
end

--- data (csvio.read) -> rows as { known column = trimmed value } tables, or
--- nil and a message when the columns cannot serve any chosen provider.
function _M.extract(data, names)
  local index, dup = {}, nil
  for i, c in ipairs(data.columns) do
    local k = tostring(c):lower():match("^%s*(.-)%s*$")
    if KNOWN[k] then
      if index[k] then dup = k end
      index[k] = i
    end
  end
  if dup then return nil, "column '" .. dup .. "' appears twice in the header" end
  local out = {}
  for r, row in ipairs(data.rows) do
    local rec = {}
    for k, i in pairs(index) do
      rec[k] = str(data.format == "csv" and row[i] or row[data.columns[i]])
    end
    out[r] = rec
  end
  for _, name in ipairs(names) do
    local probe = _M.usable(name, {
      first_name = index.first_name and "x", last_name = index.last_name and "x",
      full_name = index.full_name and "x y", linkedin_url = index.linkedin_url and "x",
      id = (index[ID_COLUMN[name] or ""] or index.id) and "00000000-0000-4000-8000-000000000000",
      text = index.text and "Blue Bottle Coffee",
    }, {})
    if not probe then
      return nil, "no column " .. name .. " can use (it needs " .. (NEEDS[name] or "its input") .. ")"
    end
  end
  return out
end

--- The input a provider is sent for a row (before prepare), or nil.
function _M.input_for(name, rec)
  if name == "parsetx" then
    return rec.text and { text = rec.text } or nil
  end
  local id_col = ID_COLUMN[name]
  if id_col then
    local id = rec[id_col] or rec.id
    return id and { id = id } or nil
  end
  local p = {}
  for _, c in ipairs(PERSON) do p[c] = rec[c] end
  return p
end

--- The input for `name` if the provider can take it: input | nil, why.
function _M.usable(name, rec, opts)
  local input = _M.input_for(name, rec)
  if not input then return nil, "no " .. (NEEDS[name] or "input") end
  local spec = assert(providers.get(name))
  local ok, why = spec.prepare(input, opts)
  if ok == nil then return nil, why end
  return input
end

return _M
