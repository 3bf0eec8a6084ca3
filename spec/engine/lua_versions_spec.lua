-- What the rockspec promises is what is tested: Lua 5.4 and LuaJIT 2.1.
-- PUC Lua 5.1 (and 5.2) cannot yield across pcall, which every engine step
-- does: `require "enrich"` refuses them with a clear message instead of
-- failing every job later (issue 10, fault 8).
local hosts = require "hosts.support"

describe("require 'enrich' on PUC Lua 5.1", function()
  it("raises a clear message naming the versions that work", function()
    local _, err, code = hosts.run("lua5.1 -v")
    if code ~= 0 then
      pending("lua5.1 is not installed: " .. err)
      return
    end
    local out = hosts.run([[lua5.1 -e "package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path
      local ok, e = pcall(require, 'enrich'); print(ok, e)"]])
    assert.matches("^false\tlua%-enrich needs Lua 5%.3, 5%.4 or LuaJIT 2%.1", out)
    assert.matches("cannot yield across pcall", out)
  end)
end)
