-- Rows naming the same person become one group, sent once and sharing the
-- answer (DESIGN.md). The same person: the same provider id; or the same
-- LinkedIn profile (URL lower-cased, scheme, `www.`, query and trailing `/`
-- dropped); or the same names and domain after trimming, collapsing inner
-- spaces and lower-casing (accents kept; domain without `www.`).
local ID_COLUMN = require("enrich.cli.records").ID_COLUMN

local ipairs, pairs, lower = ipairs, pairs, string.lower

local _M = { _VERSION = "0.1.0" }

-- Lower-cased, inner spaces collapsed, trimmed; nil when empty.
local function squash(s)
  if not s then return nil end
  s = lower(s)
  if s:find("%s%s") or s:find("[\t\r\n\v\f]") then s = s:gsub("%s+", " ") end
  local a = s:find("%S")
  if not a then return nil end
  if a > 1 or s:byte(-1) == 32 then s = s:match("^%s*(.*%S)") end
  return s
end

function _M.linkedin(url)
  if not url then return nil end
  local u = lower(url):match("^%s*(.-)%s*$")
  u = u:gsub("^%a[%w+.-]*://", ""):gsub("^www%.", ""):gsub("[?#].*$", ""):gsub("/+$", "")
  return u ~= "" and u or nil
end

function _M.domain(d)
  d = squash(d)
  if not d then return nil end
  d = d:gsub("^%a[%w+.-]*://", ""):gsub("^www%.", ""):gsub("/.*$", "")
  return d ~= "" and d or nil
end

function _M.names(rec)
  local first, last = squash(rec.first_name), squash(rec.last_name)
  if first or last then return squash((first or "") .. " " .. (last or "")) end
  return squash(rec.full_name)
end

--- Every identity key of a row, strongest first: provider ids, the
--- LinkedIn profile, names + domain; then, for rows with none of these,
--- a key of their own (transaction text, or nothing: the row alone).
function _M.keys(rec)
  local keys = {}
  for _, col in pairs(ID_COLUMN) do
    if rec[col] then keys[#keys + 1] = "id:" .. col .. ":" .. lower(rec[col]) end
  end
  if rec.id then keys[#keys + 1] = "id:id:" .. lower(rec.id) end
  table.sort(keys)
  local li = _M.linkedin(rec.linkedin_url)
  if li then keys[#keys + 1] = "li:" .. li end
  local names, domain = _M.names(rec), _M.domain(rec.domain)
  if names and domain then keys[#keys + 1] = "nd:" .. names .. "|" .. domain end
  if rec.text then keys[#keys + 1] = "tx:" .. rec.text end
  return keys
end

--- The key a provider's answer for this row is kept under in the store:
--- its own id where it has one, else the strongest person key, else a key
--- made of everything the row says (names, company, domain, email).
function _M.answer_key(name, rec, keys)
  local col = ID_COLUMN[name]
  if col then
    local id = rec[col] or rec.id
    return id and ("id:" .. lower(id)) or nil
  end
  for _, k in ipairs(keys) do
    if k:sub(1, 3) ~= "id:" then return k end
  end
  return "row:" .. (_M.names(rec) or "") .. "|" .. (squash(rec.company) or "") .. "|"
    .. (_M.domain(rec.domain) or "") .. "|" .. (squash(rec.email) or "")
end

--- recs -> groups (each { rows = {i, ...}, keys = {...} }, in order of
--- first row) and group_of[i]. Union-find over the shared keys.
function _M.group(recs)
  local parent, owner = {}, {}
  local function find(i)
    local root = i
    while parent[root] ~= root do root = parent[root] end
    while parent[i] ~= root do parent[i], i = root, parent[i] end
    return root
  end
  local row_keys = {}
  for i, rec in ipairs(recs) do
    parent[i] = i
    local keys = _M.keys(rec)
    row_keys[i] = keys
    for _, k in ipairs(keys) do
      local j = owner[k]
      if j then
        local a, b = find(i), find(j)
        if a ~= b then
          if a < b then parent[b] = a else parent[a] = b end
        end
      else
        owner[k] = i
      end
    end
  end
  local groups, by_root, group_of = {}, {}, {}
  for i = 1, #recs do
    local r = find(i)
    local g = by_root[r]
    if not g then
      g = { rows = {}, index = #groups + 1 }
      groups[#groups + 1] = g
      by_root[r] = g
    end
    g.rows[#g.rows + 1] = i
    group_of[i] = g
  end
  for _, g in ipairs(groups) do g.keys = row_keys[g.rows[1]] end
  return groups, group_of, row_keys
end

return _M
