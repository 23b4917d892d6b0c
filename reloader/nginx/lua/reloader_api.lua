-- reloader_api: the loopback HTTP interface the daemon updates upstreams through.
--
--   POST   /upstream/NAME   replace the servers of NAME (versioned JSON body)
--   GET    /upstream/NAME   the live state of NAME, in the body's format
--   DELETE /upstream/NAME   forget NAME (traffic falls back to the file's servers)
--   GET    /upstreams       every upstream in one answer, for reconciliation
--   GET    /panic           the upstreams balanced in panic (panic_threshold)
--
-- Guarantees: every answer is JSON; an error answer is {"error": "..."}
-- naming what is wrong, and a refused request changes nothing:
--   401  no X-Reloader-Token header, or not the secret in the file named by
--        $reloader_secret_file (compared in constant time: every byte of the
--        secret is compared, with no early exit). Checked before anything
--        else, on every method and path, so a request proxied here through
--        nginx (which arrives from 127.0.0.1) learns and changes nothing;
--   421  a Host header that is not one of $reloader_hosts (the interface's
--        own listen host:port): browser and DNS-rebinding requests;
--   415  a request body whose Content-Type is not application/json;
--   400 bad body or name, 404 unknown path or upstream, 405 wrong method,
--   409 too many upstreams, 413 body too large, 507 shared dict full.
-- The secret file is read by each worker lazily and kept for at most
-- SECRET_TTL seconds, so a secret the daemon creates after nginx started
-- (or replaces) is used within that time, without a reload; while there is
-- no readable secret, every request gets 401.

local store = require "reloader_store"
local cjson = require("cjson.safe").new()
local bit = require "bit"
local bor, bxor, byte = bit.bor, bit.bxor, string.byte

local _M = {}

-- Seconds a worker keeps the secret it read before reading the file again.
_M.SECRET_TTL = 1
local MIN_SECRET = 32

-- Per worker: the secret last read, its file and when; and when a missing
-- secret was last logged (at most every LOG_EVERY seconds).
local cached = { path = nil, value = nil, read_at = -math.huge }
local LOG_EVERY = 10
local logged_at = -math.huge

local function respond(status, body, headers)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    if headers then
        for key, value in pairs(headers) do
            ngx.header[key] = value
        end
    end
    ngx.print(body, "\n")
    return ngx.exit(status)
end

local function fail(status, message, headers)
    return respond(status, cjson.encode({ error = message }), headers)
end

local function read_body()
    local length = ngx.var.http_content_length
    if length and (tonumber(length) or math.huge) > store.MAX_BODY then
        -- Refuse before reading: a 1 MB body is never buffered.
        return nil, 413
    end
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if body == nil then
        if ngx.req.get_body_file() then
            -- Only reachable when client_body_buffer_size is below the cap.
            return nil, 413
        end
        return nil, 400
    end
    if #body > store.MAX_BODY then
        return nil, 413
    end
    return body
end

local function log_rarely(...)
    local now = ngx.now()
    if now - logged_at >= LOG_EVERY then
        logged_at = now
        ngx.log(ngx.ERR, ...)
    end
end

-- The secret in the file, or nil and why not. A present secret is kept for
-- SECRET_TTL; a missing one is looked for again on the next request.
local function secret()
    local path = ngx.var.reloader_secret_file
    if path == nil or path == "" then
        return nil, "$reloader_secret_file is not set; use the snippet of nginx-upstream-reloader nginx-snippet --lua"
    end
    local now = ngx.now()
    if cached.value and cached.path == path and now - cached.read_at < _M.SECRET_TTL then
        return cached.value
    end
    local file, err = io.open(path, "rb")
    if not file then
        cached.value = nil
        return nil, "cannot read the secret file: " .. tostring(err) .. " (the daemon creates it when it starts)"
    end
    local text = file:read(4097) or ""
    file:close()
    local value = text:match("^%s*(%S+)%s*$")
    if value == nil or #value < MIN_SECRET or #value > 256 then
        cached.value = nil
        return nil, "the secret file " .. path .. " does not hold a secret of 32 to 256 characters"
    end
    cached.path, cached.value, cached.read_at = path, value, now
    return value
end

-- Constant time: every byte of the secret is compared whatever the token
-- holds, and the loop runs over the secret's length, not the token's.
local function same(token, expected)
    local diff = #token == #expected and 0 or 1
    for i = 1, #expected do
        diff = bor(diff, bxor(byte(token, i) or 0, byte(expected, i)))
    end
    return diff == 0
end

local function authenticated()
    local expected, why = secret()
    if not expected then
        log_rarely("reloader interface: refusing every request: ", why)
        return false
    end
    local token = ngx.var.http_x_reloader_token
    return type(token) == "string" and same(token, expected)
end

local function own_host()
    local host = ngx.var.http_host
    local allowed = ngx.var.reloader_hosts
    if host == nil or allowed == nil then
        return false
    end
    host = host:lower()
    for candidate in allowed:gmatch("%S+") do
        if host == candidate:lower() then
            return true
        end
    end
    return false
end

local function has_body()
    local length = ngx.var.http_content_length
    return ngx.var.http_transfer_encoding ~= nil or (length ~= nil and length ~= "0")
end

local function json_content_type()
    local value = ngx.var.http_content_type
    if value == nil then
        return false
    end
    local media = value:match("^%s*([^;%s]+)")
    return media ~= nil and media:lower() == "application/json"
end

local function post(name)
    local body, status = read_body()
    if not body then
        if status == 413 then
            return fail(413, "body larger than " .. store.MAX_BODY .. " bytes")
        end
        return fail(400, "empty body")
    end
    local upstream, err = store.decode(body)
    if not upstream then
        return fail(400, err)
    end
    -- (revision, changed) or (nil, HTTP status, error)
    local revision, changed, put_err = store.put(name, upstream)
    if not revision then
        ngx.log(ngx.ERR, "upstream ", name, ": ", put_err)
        return fail(changed, put_err)
    end
    if changed then
        ngx.log(ngx.NOTICE, "upstream ", name, ": revision ", revision, ", ",
            #upstream.servers, " servers")
    end
    return respond(200, string.format('{"name":%s,"revision":%d,"changed":%s}',
        cjson.encode(name), revision, tostring(changed)))
end

--- content_by_lua handler of the interface location.
function _M.handle()
    if not authenticated() then
        return fail(401, "missing or wrong X-Reloader-Token", { ["WWW-Authenticate"] = "X-Reloader-Token" })
    end
    if not own_host() then
        return fail(421, "Host must be this interface's own address (" .. tostring(ngx.var.reloader_hosts) .. ")")
    end
    if has_body() and not json_content_type() then
        return fail(415, "a request body must have Content-Type: application/json")
    end
    local method = ngx.req.get_method()
    local uri = ngx.var.uri
    if uri == "/upstreams" then
        if method ~= "GET" and method ~= "HEAD" then
            return fail(405, "method " .. method .. " not allowed on /upstreams", { Allow = "GET, HEAD" })
        end
        return respond(200, store.all())
    end
    if uri == "/panic" then
        if method ~= "GET" and method ~= "HEAD" then
            return fail(405, "method " .. method .. " not allowed on /panic", { Allow = "GET, HEAD" })
        end
        return respond(200, store.panics())
    end
    local name = uri:match("^/upstream/(.+)$")
    if not name then
        return fail(404, "no such path; use /upstream/NAME or /upstreams")
    end
    if not store.valid_name(name) then
        return fail(400, "upstream name must match [a-z0-9][a-z0-9._-]*")
    end
    if method == "POST" or method == "PUT" then
        return post(name)
    elseif method == "GET" or method == "HEAD" then
        local text = store.get(name)
        if not text then
            return fail(404, "unknown upstream " .. name)
        end
        return respond(200, text)
    elseif method == "DELETE" then
        if not store.delete(name) then
            return fail(404, "unknown upstream " .. name)
        end
        ngx.log(ngx.NOTICE, "upstream ", name, ": deleted; the file's servers serve it")
        return respond(200, cjson.encode({ name = name, deleted = true }))
    end
    return fail(405, "method " .. method .. " not allowed", { Allow = "GET, HEAD, POST, PUT, DELETE" })
end

--- Handler for the 413 nginx itself answers (e.g. a chunked body over the cap).
function _M.too_large()
    if not authenticated() then
        return fail(401, "missing or wrong X-Reloader-Token", { ["WWW-Authenticate"] = "X-Reloader-Token" })
    end
    return fail(413, "body larger than " .. store.MAX_BODY .. " bytes")
end

return _M
