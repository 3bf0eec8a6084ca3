-- An intrusive binary min-heap of timers: any table with a number `at` can
-- be pushed; the heap keeps its position in the field `hi`, so a waiting
-- job costs no extra table and can be removed or moved in O(log n).
local floor = math.floor

local _M = { _VERSION = "0.1.0" }
local heap_mt = {}
heap_mt.__index = heap_mt

function _M.new() return setmetatable({ n = 0 }, heap_mt) end

-- Ties break on `seq`, so timers set for the same instant fire in order.
local function less(a, b)
  return a.at < b.at or (a.at == b.at and a.seq < b.seq)
end

local function place(h, i, x) h[i] = x; x.hi = i end

local function up(h, i)
  local x = h[i]
  while i > 1 do
    local p = floor(i / 2)
    if not less(x, h[p]) then break end
    place(h, i, h[p])
    i = p
  end
  place(h, i, x)
end

local function down(h, i)
  local n, x = h.n, h[i]
  while true do
    local c = 2 * i
    if c > n then break end
    if c < n and less(h[c + 1], h[c]) then c = c + 1 end
    if not less(h[c], x) then break end
    place(h, i, h[c])
    i = c
  end
  place(h, i, x)
end

local seq = 0

--- Adds x (or moves it, if already in) to fire at time `at`.
function heap_mt:push(x, at)
  seq = seq + 1
  x.at, x.seq = at, seq
  if x.hi then
    up(self, x.hi)
    down(self, x.hi)
    return
  end
  self.n = self.n + 1
  place(self, self.n, x)
  up(self, self.n)
end

function heap_mt:peek() return self[1] end

function heap_mt:remove(x)
  local i = x.hi
  if not i or self[i] ~= x then return false end
  local last = self[self.n]
  self[self.n] = nil
  self.n = self.n - 1
  x.hi = nil
  if i <= self.n then
    place(self, i, last)
    up(self, i)
    down(self, last.hi)
  end
  return true
end

function heap_mt:pop()
  local top = self[1]
  if top then self:remove(top) end
  return top
end

return _M
