-- The `kong` global of the bridge tier: the PDK functions customer_verification calls.
--
-- Kong's own modules are used where they load in plain nginx with lua-nginx-module (from
-- $KONG_SOURCE): kong.pdk.ctx (kong.ctx.shared), kong.pdk.private.phases (every phase check) and
-- kong.pdk.private.checks (header validation and normalisation). The others need Kong's build
-- (its patched cjson, penlight, resty.jit-uuid, resty.ada, inspect), so the functions below follow
-- Kong 3.9.1's code for them, named after the file each follows. What matters to a plugin server
-- is kept: what each returns (values, or `nil, err`), what raises a Lua error, what yields.

local cjson = require "cjson.safe"
local phases = require "kong.pdk.private.phases"
local checks = require "kong.pdk.private.checks"

local PHASES = phases.phases
local check_phase = phases.check
local ngx = ngx
local var = ngx.var

local _M = {}

-- kong/pdk/log.lua: one function per level, written to nginx's error log with Kong's prefix.
local function new_log(namespace)
  local log = {}
  for name, level in pairs({ debug = ngx.DEBUG, info = ngx.INFO, notice = ngx.NOTICE,
                             warn = ngx.WARN, err = ngx.ERR, crit = ngx.CRIT,
                             alert = ngx.ALERT, emerg = ngx.EMERG }) do
    log[name] = function(...)
      local parts = { ... }
      for i = 1, select("#", ...) do
        parts[i] = tostring(parts[i])
      end
      ngx.log(level, "[kong] ", namespace, table.concat(parts))
    end
  end
  log.error = log.err  -- process.lua calls kong.log.error
  return log
end

-- kong/pdk/request.lua
local function new_request()
  local request = {}

  function request.get_scheme()
    check_phase(PHASES.request)
    return var.scheme
  end

  function request.get_method()
    check_phase(PHASES.request)
    return ngx.req.get_method()
  end

  function request.get_http_version()
    check_phase(PHASES.request)
    return ngx.req.http_version()
  end

  function request.get_path_with_query()
    check_phase(PHASES.request)
    return var.request_uri or ""
  end

  function request.get_headers(max_headers)
    check_phase(PHASES.request)
    if max_headers == nil then
      return ngx.req.get_headers()
    end
    if type(max_headers) ~= "number" then
      error("max_headers must be a number", 2)
    elseif max_headers < 1 then
      error("max_headers must be >= 1", 2)
    elseif max_headers > 1000 then
      error("max_headers must be <= 1000", 2)
    end
    return ngx.req.get_headers(max_headers)
  end

  function request.get_header(name)
    check_phase(PHASES.request)
    if type(name) ~= "string" then
      error("header name must be a string", 2)
    end
    return var["http_" .. name:lower():gsub("-", "_")]
  end

  -- A body nginx buffered to a file is read only up to max_allowed_file_size (0: any size).
  function request.get_raw_body(max_allowed_file_size)
    check_phase(PHASES.request)
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body then
      return body
    end
    local body_file = ngx.req.get_body_file()
    if not body_file then
      return ""
    end
    if not max_allowed_file_size or max_allowed_file_size < 0 then
      return nil, "request body did not fit into client body buffer, consider raising " ..
                  "'client_body_buffer_size'"
    end
    local file, err = io.open(body_file, "r")
    if not file then
      return nil, "failed to open cached request body '" .. body_file .. "': " .. err
    end
    local size = file:seek("end") or 0
    if max_allowed_file_size > 0 and size > max_allowed_file_size then
      file:close()
      return nil, ("request body file too big: %d > %d"):format(size, max_allowed_file_size)
    end
    file:seek("set")
    local chunks = {}
    while true do
      local data = file:read(1048576)
      if not data then
        break
      end
      chunks[#chunks + 1] = data
      ngx.sleep(0)  -- kong.tools.yield: Kong yields between chunks
    end
    file:close()
    return table.concat(chunks)
  end

  -- Only the form branch and the unsupported-type answer (JSON and multipart need Kong's build).
  function request.get_body(mimetype, max_args)
    check_phase(PHASES.request)
    local content_type = mimetype or request.get_header("Content-Type")
    if not content_type then
      return nil, "missing content type"
    end
    local lowered = content_type:lower():match("^[^;]*")
    if lowered:find("application/x-www-form-urlencoded", 1, true) ~= 1 then
      return nil, "unsupported content type '" .. content_type .. "'", lowered
    end
    if max_args ~= nil then
      if type(max_args) ~= "number" then
        error("max_args must be a number", 2)
      elseif max_args < 1 then
        error("max_args must be >= 1", 2)
      elseif max_args > 1000 then
        error("max_args must be <= 1000", 2)
      end
    end
    ngx.req.read_body()
    local args, err
    if max_args ~= nil then
      args, err = ngx.req.get_post_args(max_args)
    else
      args, err = ngx.req.get_post_args()
    end
    if not args then
      return nil, err, "application/x-www-form-urlencoded"
    end
    return args, nil, "application/x-www-form-urlencoded"
  end

  return request
end

-- kong/pdk/service/request.lua
local function new_service_request()
  local request = {}
  local access_and_rewrite = phases.new(PHASES.rewrite, PHASES.access)

  function request.set_header(header, value)
    check_phase(access_and_rewrite)
    checks.validate_header(header, value)
    ngx.req.set_header(header, checks.normalize_multi_header(value))
  end

  function request.clear_header(header)
    check_phase(access_and_rewrite)
    if type(header) ~= "string" then
      error("header must be a string", 2)
    end
    ngx.req.clear_header(header)
  end

  function request.set_headers(headers)
    check_phase(access_and_rewrite)
    if type(headers) ~= "table" then
      error("headers must be a table", 2)
    end
    checks.validate_headers(headers)
    for name, value in pairs(headers) do
      ngx.req.set_header(name, checks.normalize_multi_header(value))
    end
  end

  return { request = request }
end

-- kong/pdk/client.lua; consumers come from the gateway's configuration, read after a yield as
-- Kong's database or cache read would.
local function new_client(consumers)
  local client = {}
  local uuid = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

  function client.authenticate(consumer, credential)
    check_phase(PHASES.access)
    if consumer ~= nil and type(consumer) ~= "table" then
      error("consumer must be a table or nil", 2)
    elseif credential ~= nil and type(credential) ~= "table" then
      error("credential must be a table or nil", 2)
    elseif credential == nil and consumer == nil then
      error("either credential or consumer must be provided", 2)
    end
    ngx.ctx.authenticated_consumer = consumer
    ngx.ctx.authenticated_credential = credential
  end

  function client.get_credential()
    return ngx.ctx.authenticated_credential
  end

  function client.get_consumer()
    return ngx.ctx.authenticated_consumer
  end

  function client.load_consumer(consumer_id, search_by_username)
    if type(consumer_id) ~= "string" then
      error("consumer_id must be a string", 2)
    end
    local is_uuid = consumer_id:find(uuid) ~= nil
    if not is_uuid and not search_by_username then
      error("cannot load a consumer with an id that is not a uuid", 2)
    end
    ngx.sleep(0)
    for _, field in ipairs(is_uuid and { "id", "username" } or { "username" }) do
      if field == "id" or search_by_username then
        for _, consumer in ipairs(consumers) do
          if consumer[field] == consumer_id then
            return consumer
          end
        end
      end
    end
    return nil
  end

  return client
end

-- kong/pdk/response.lua: in the access phase Kong delays the response (ctx.delay_response)
-- and ends the plugin's coroutine with a yield that is never resumed, so a plugin server is
-- never answered. The runloop sends it after the plugins (bridge_gateway.lua).
local function new_response()
  local response = {}

  function response.exit(status, body, headers)
    check_phase(phases.new(PHASES.rewrite, PHASES.access, PHASES.header_filter))
    if type(status) ~= "number" then
      error("code must be a number", 2)
    elseif status < 100 or status > 599 then
      error("code must be a number between 100 and 599", 2)
    end
    if body ~= nil and type(body) ~= "string" and type(body) ~= "table" then
      error("body must be a nil, string or table", 2)
    end
    if headers ~= nil and type(headers) ~= "table" then
      error("headers must be a nil or table", 2)
    end
    if headers ~= nil then
      checks.validate_headers(headers)
    end
    local ctx = ngx.ctx
    ctx.KONG_EXITED = true
    if ctx.delay_response and not ctx.delayed_response then
      ctx.delayed_response = { status_code = status, content = body, headers = headers }
      coroutine.yield()
    else
      return _M.send(status, body, headers)
    end
  end

  function response.error(status, message, headers)
    return response.exit(status, { message = message or "An unexpected error occurred" },
                         headers)
  end

  return response
end

-- What Kong's send() writes for a response.
function _M.send(status, body, headers)
  ngx.status = status
  for name, value in pairs(headers or {}) do
    ngx.header[name] = checks.normalize_multi_header(value)
  end
  if type(body) == "table" then
    body = cjson.encode(body)
    ngx.header["Content-Type"] = "application/json; charset=utf-8"
  end
  if body then
    ngx.header["Content-Length"] = #body
    ngx.print(body)
  end
  return ngx.exit(status)
end

function _M.new(gateway)
  local kong = {
    configuration = {},
    log = new_log(""),
    plugin = {
      get_id = function()
        return ngx.ctx.plugin_id
      end,
    },
    request = new_request(),
    service = new_service_request(),
    response = new_response(),
    client = new_client(gateway.consumers or {}),
  }
  kong.ctx = require("kong.pdk.ctx").new(kong)
  return kong
end

return _M
