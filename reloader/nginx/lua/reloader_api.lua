-- reloader_api: the loopback HTTP interface the daemon updates upstreams through.
--
--   POST   /upstream/NAME   replace the servers of NAME (versioned JSON body)
--   GET    /upstream/NAME   the live state of NAME, in the body's format
--   DELETE /upstream/NAME   forget NAME (traffic falls back to the file's servers)
--   GET    /upstreams       every upstream in one answer, for reconciliation
--
-- Guarantees: every answer is JSON; an error answer is {"error": "..."}
-- naming what is wrong (400 bad body or name, 404 unknown path or
-- upstream, 405 wrong method, 413 body too large, 507 shared dict full),
-- and a refused update changes nothing.

local store = require "reloader_store"
local cjson = require("cjson.safe").new()

local _M = {}

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
    local revision, changed_or_err = store.put(name, upstream)
    if not revision then
        ngx.log(ngx.ERR, "upstream ", name, ": ", changed_or_err)
        return fail(507, changed_or_err)
    end
    if changed_or_err then
        ngx.log(ngx.NOTICE, "upstream ", name, ": revision ", revision, ", ",
            #upstream.servers, " servers")
    end
    return respond(200, string.format('{"name":%s,"revision":%d,"changed":%s}',
        cjson.encode(name), revision, tostring(changed_or_err)))
end

--- content_by_lua handler of the interface location.
function _M.handle()
    local method = ngx.req.get_method()
    local uri = ngx.var.uri
    if uri == "/upstreams" then
        if method ~= "GET" and method ~= "HEAD" then
            return fail(405, "method " .. method .. " not allowed on /upstreams", { Allow = "GET, HEAD" })
        end
        return respond(200, store.all())
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
    return fail(413, "body larger than " .. store.MAX_BODY .. " bytes")
end

return _M
