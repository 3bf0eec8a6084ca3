-- An intrusive binary min-heap of timers: any table with a number `at` can
-- be pushed; the heap keeps its position in the field `hi`, so a waiting
-- job costs no extra table and can be removed or moved in O(log n).
local floor = math.floor

local _M = { _VERSION = "0.1.0" }
local heap_mt = {}
heap_mt.__index = heap_mt

function _M.new() return setmetatable({ n = 0 }, heap_mt) end

-- Ties break on `seq`, so timers set for the same instant fire in order.
-- The comparison is written out in up() and down(): they run for every
-- poll of every job, and a call per level would double their cost.

local function up(h, i)
  local x = h[i]
  local at, sq = x.at, x.seq
  while i > 1 do
    local p = floor(i / 2)
    local y = h[p]
    local yat = y.at
    if not (at < yat or (at == yat and sq < y.seq)) then break end
    h[i] = y; y.hi = i
    i = p
  end
  h[i] = x; x.hi = i
end

local function down(h, i)
  local n, x = h.n, h[i]
  local at, sq = x.at, x.seq
  while true do
    local c = 2 * i
    if c > n then break end
    local y = h[c]
    if c < n then
      local z = h[c + 1]
      if z.at < y.at or (z.at == y.at and z.seq < y.seq) then c, y = c + 1, z end
    end
    local yat = y.at
    if not (yat < at or (yat == at and y.seq < sq)) then break end
    h[i] = y; y.hi = i
    i = c
  end
  h[i] = x; x.hi = i
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
  local n = self.n + 1
  self.n = n
  self[n] = x; x.hi = n
  up(self, n)
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
    self[i] = last; last.hi = i
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
