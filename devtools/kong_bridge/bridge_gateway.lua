-- The part of Kong 3.9's runloop around an external plugin, for the bridge tier.
--
-- Kong's own kong.runloop.plugin_servers (init.lua, plugin.lua, process.lua's query,
-- rpc/mp_rpc.lua) is loaded unchanged from $KONG_SOURCE and does every exchange with the plugin
-- server. This file supplies what Kong's runloop would: the configuration (routes, each with
-- its plugin entity, consumers), the access-phase iterator (a coroutine per plugin,
-- ctx.delay_response, Kong's 500 when a plugin raises), worker events between workers, the
-- deployment's fail-closed pre- and post-function (kong.yml), and an upstream that answers with
-- the request headers it received.

local cjson = require "cjson.safe"
local pdk = require "kong_pdk_standin"

local ngx = ngx
local _M = {}

local gateway          -- the JSON written by devtools/kong_bridge/__init__.py
local external         -- Kong's representation of the external plugin
local handlers = {}    -- worker event handlers: "source/event" -> { function, ... }
local seen_events = 0  -- the last worker event this worker ran
local EVENTS = "kong_bridge_events"

local function read_json(path)
  local file = assert(io.open(path))
  local data = assert(cjson.decode(file:read("*a")))
  file:close()
  return data
end

-- kong.worker_events (resty.events in Kong): an event posted in one worker runs in every worker,
-- asynchronously. Here through a shared dict, polled by each worker.
local function new_worker_events()
  local dict = ngx.shared[EVENTS]
  local events = {}

  function events.register(handler, source, event)
    local key = source .. "/" .. event
    handlers[key] = handlers[key] or {}
    table.insert(handlers[key], handler)
  end

  function events.post(source, event, data)
    local id = assert(dict:incr("last", 1, 0))
    dict:set("event:" .. id, cjson.encode({ key = source .. "/" .. event, data = data }))
    return true
  end

  function events.poll()
    local last = dict:get("last") or 0
    while seen_events < last do
      seen_events = seen_events + 1
      local event = cjson.decode(dict:get("event:" .. seen_events) or "null")
      for _, handler in ipairs(event and handlers[event.key] or {}) do
        handler(event.data)
      end
    end
  end

  return events
end

function _M.init(path)
  gateway = read_json(path)
  -- kong.global: mp_rpc calls only its set_namespaced_log, for the log phase (which this plugin
  -- has not); Kong's module needs Kong's cache and cluster events.
  package.loaded["kong.global"] = { set_namespaced_log = function() end }
  kong = pdk.new(gateway)
  kong.configuration = { pluginservers = { gateway.pluginserver } }
  local ok, plugin = require("kong.runloop.plugin_servers").load_plugin(gateway.plugin_name)
  assert(ok, plugin)
  external = plugin
end

function _M.init_worker()
  kong.worker_events = new_worker_events()
  seen_events = ngx.shared[EVENTS]:get("last") or 0
  -- Kong's: registers the reset_instances handler; a start_cmd, when set, is spawned by worker 0
  assert(require("kong.runloop.plugin_servers").start())
  assert(ngx.timer.every(0.05, function() kong.worker_events.poll() end))
end

local function route_for(uri)
  for _, route in ipairs(gateway.routes) do
    if uri:sub(1, #route.path) == route.path then
      return route
    end
  end
end

-- kong.yml's global plugins: pre-function runs first, post-function last.
local function pre_function()
  kong.service.request.clear_header(gateway.customer_id_header)
end

local function post_function()
  if not kong.client.get_credential() and not kong.client.get_consumer()
     and not kong.ctx.shared.customer_verification_preflight then
    return kong.response.exit(503, { message = "Authentication is temporarily unavailable" })
  end
end

-- kong/init.lua execute_collecting_plugins_iterator, access phase.
local function run(plugin, ctx)
  if ctx.delayed_response then
    return
  end
  ctx.plugin_id = plugin.id
  local co = coroutine.create(plugin.handler)
  local ok, err = coroutine.resume(co, plugin.entity, plugin.config)
  if not ok then
    kong.log.err(err)
    ctx.delayed_response = { status_code = 500,
                             content = { message = "An unexpected error occurred" } }
  end
end

function _M.access()
  local ctx = ngx.ctx
  ctx.KONG_PHASE = require("kong.pdk.private.phases").phases.access
  local route = route_for(ngx.var.uri)
  if not route then
    return ngx.exit(404)
  end
  ctx.delay_response = true
  local plugins = {}
  if gateway.fail_closed then
    table.insert(plugins, { id = "pre-function", handler = pre_function })
  end
  for _, entity in ipairs(route.plugins) do
    table.insert(plugins, { id = entity.config.__plugin_id, handler = external.access,
                            entity = external, config = entity.config })
  end
  if gateway.fail_closed then
    table.insert(plugins, { id = "post-function", handler = post_function })
  end
  for _, plugin in ipairs(plugins) do
    run(plugin, ctx)
  end
  ctx.delay_response = nil
  local response = ctx.delayed_response
  if response then
    return pdk.send(response.status_code, response.content, response.headers)
  end
end

-- The upstream: what it received, as JSON.
function _M.upstream()
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode({ message = "proxied", headers = ngx.req.get_headers(1000) }))
end

return _M
