-- reloader_store: the validated, versioned state of every dynamic upstream.
--
-- Guarantees:
--  * decode() accepts exactly the documented update body (format version 1)
--    and returns either a normalised upstream or an error naming the field;
--    nothing is stored unless the whole body is valid.
--  * every upstream lives in the lua_shared_dict "upstream_reloader" as a
--    pointer "p:NAME" (its current revision) and one document
--    "s:NAME:REVISION" (the normalised JSON, byte-stable). An update is
--    allocate-then-swap: the new document is written under a new key first,
--    then the pointer is switched, then the old document is freed. A refused
--    update (507, dict full; 409, too many upstreams) therefore changes
--    nothing: the old state stays stored and served.
--  * revisions come from one counter "rev" shared by every upstream, so a
--    revision is never reused, across DELETE and re-POST and across names.
--    The pointer is only switched when the state really changed, so a
--    periodic re-assert of the same state never resets balancer state.
--  * nothing is ever evicted: the module only uses safe_set / safe_add
--    (which fail instead of evicting when the dict is full), incr on keys
--    that exist, and in-place number updates (which allocate nothing). So
--    the counter and the pointers cannot disappear when the dict fills up.
--  * at most MAX_UPSTREAMS names are stored (counted in "n"); a POST for one
--    more name is refused and changes nothing.
--  * the daemon is the only writer (the interface authenticates it), and it
--    writes each name from one thread. Two concurrent writers of one name
--    may leave an unreferenced document behind; never a pointer to nothing.

-- A private cjson instance, so these settings never leak into other code.
local cjson = require("cjson.safe").new()
-- "NaN", "Infinity" and hex numbers are not JSON; deep nesting is not an update.
cjson.decode_invalid_numbers(false)
cjson.decode_max_depth(8)
local ffi = require "ffi"

local _M = {}

_M.DICT_NAME = "upstream_reloader"
_M.FORMAT_VERSION = 1
-- Bodies larger than this are refused with 413 (the interface server sets
-- client_max_body_size to the same value). 1 MiB holds MAX_SERVERS servers
-- with every field at its longest (about 400 bytes each, 253-character host
-- names and the traffic options included), so a valid update is never too large. Mirrored by
-- MAX_BODY and MAX_SERVERS in reloader/nginx/__init__.py (a test checks).
_M.MAX_BODY = 1048576
_M.MAX_SERVERS = 2048
-- Upstream names stored at once; more are refused (409). Far above any
-- config, it keeps names nobody manages from filling the dict.
_M.MAX_UPSTREAMS = 4096
_M.MAX_WEIGHT = 1000000
_M.MAX_FAILS = 1000000
_M.MAX_FAIL_TIMEOUT = 86400
-- Traffic options (docs/lua.md): slow-start window in seconds, its
-- aggression, and the latest wall-clock time a server may say it was added
-- (2100-01-01: anything later is a mistake, not a time).
_M.MAX_WINDOW = 3600
_M.MAX_AGGRESSION = 100
_M.MAX_ADDED = 4102444800

local AF_INET, AF_INET6 = 2, 10
pcall(ffi.cdef, "int inet_pton(int af, const char *src, void *dst);")
local addr_buf = ffi.new("unsigned char[16]")

local SERVER_KEYS = {
    host = true, port = true, weight = true, max_fails = true,
    fail_timeout = true, backup = true, down = true, added = true,
}
local DOC_KEYS = { version = true, servers = true, slow_start = true, panic_threshold = true }
local SLOW_START_KEYS = { window = true, min_weight = true, aggression = true }

local shm_cache

local function dict()
    if shm_cache == nil then
        shm_cache = ngx.shared[_M.DICT_NAME]
        if not shm_cache then
            error("lua_shared_dict " .. _M.DICT_NAME .. " is not defined; see nginx-upstream-reloader nginx-snippet --lua")
        end
    end
    return shm_cache
end

--- True for an upstream name as the daemon allows it.
function _M.valid_name(name)
    return type(name) == "string" and #name <= 255
        -- \z, not $: PCRE's $ also matches before a trailing newline.
        and ngx.re.find(name, [[^[a-z0-9][a-z0-9._-]*\z]], "jo") ~= nil
end

--- "ipv4", "ipv6" or nil: whether host is a literal IP address.
function _M.ip_family(host)
    if ffi.C.inet_pton(AF_INET, host, addr_buf) == 1 then
        return "ipv4"
    end
    if ffi.C.inet_pton(AF_INET6, host, addr_buf) == 1 then
        return "ipv6"
    end
    return nil
end

-- An RFC 1123 host name: dot-separated labels of letters, digits and
-- hyphens, no label starting or ending with a hyphen, 253 characters at
-- most, and a last label that is not all digits (that would be a
-- mistyped IPv4 address, not a name).
local function valid_hostname(host)
    if #host == 0 or #host > 253 then
        return false
    end
    local last
    for label in (host .. "."):gmatch("([^.]*)%.") do
        if #label == 0 or #label > 63
            or not label:find("^[A-Za-z0-9]") or not label:find("[A-Za-z0-9]$")
            or label:find("[^A-Za-z0-9-]") then
            return false
        end
        last = label
    end
    return last ~= nil and last:find("^%d+$") == nil
end

local function valid_host(host)
    if type(host) ~= "string" then
        return false
    end
    return _M.ip_family(host) ~= nil or valid_hostname(host)
end

local function is_integer(value, low, high)
    return type(value) == "number" and value == math.floor(value)
        and value >= low and value <= high
end

local function is_array(value)
    if type(value) ~= "table" then
        return false
    end
    -- cjson decodes [] and {} alike to an empty table; either means "no servers".
    local count = 0
    for key in pairs(value) do
        if type(key) ~= "number" then
            return false
        end
        count = count + 1
    end
    return count == #value
end

local function field_error(index, key, what)
    return string.format("servers[%d].%s: %s", index, key, what)
end

local function check_server(index, raw)
    if type(raw) ~= "table" or is_array(raw) and next(raw) ~= nil then
        return nil, string.format("servers[%d]: must be an object", index)
    end
    for key in pairs(raw) do
        if type(key) ~= "string" or not SERVER_KEYS[key] then
            return nil, string.format("servers[%d]: unknown field %s", index, tostring(key))
        end
    end
    if not valid_host(raw.host) then
        return nil, field_error(index, "host",
            "must be an IPv4 or IPv6 address or an RFC 1123 host name")
    end
    if not is_integer(raw.port, 1, 65535) then
        return nil, field_error(index, "port", "must be an integer from 1 to 65535")
    end
    local server = {
        host = raw.host, port = raw.port, weight = 1, max_fails = 1,
        fail_timeout = 10, backup = false, down = false,
    }
    if raw.weight ~= nil then
        if not is_integer(raw.weight, 1, _M.MAX_WEIGHT) then
            return nil, field_error(index, "weight",
                "must be an integer from 1 to " .. _M.MAX_WEIGHT)
        end
        server.weight = raw.weight
    end
    if raw.max_fails ~= nil then
        if not is_integer(raw.max_fails, 0, _M.MAX_FAILS) then
            return nil, field_error(index, "max_fails",
                "must be an integer from 0 to " .. _M.MAX_FAILS)
        end
        server.max_fails = raw.max_fails
    end
    if raw.fail_timeout ~= nil then
        local value = raw.fail_timeout
        -- "value == value" rejects NaN, which cjson.safe can produce.
        if type(value) ~= "number" or value ~= value or value < 0
            or value > _M.MAX_FAIL_TIMEOUT then
            return nil, field_error(index, "fail_timeout",
                "must be a number of seconds from 0 to " .. _M.MAX_FAIL_TIMEOUT)
        end
        server.fail_timeout = value
    end
    for _, key in ipairs({ "backup", "down" }) do
        if raw[key] ~= nil then
            if type(raw[key]) ~= "boolean" then
                return nil, field_error(index, key, "must be true or false")
            end
            server[key] = raw[key]
        end
    end
    if raw.added ~= nil then
        local value = raw.added
        if type(value) ~= "number" or value ~= value or value < 0 or value > _M.MAX_ADDED then
            return nil, field_error(index, "added",
                "must be a wall-clock time in seconds from 0 to " .. _M.MAX_ADDED)
        end
        server.added = value
    end
    return server
end

local function is_number(value, low, high)
    -- "value == value" rejects NaN.
    return type(value) == "number" and value == value and value >= low and value <= high
end

local function check_slow_start(raw)
    if type(raw) ~= "table" or is_array(raw) and next(raw) ~= nil then
        return nil, "slow_start: must be an object"
    end
    for key in pairs(raw) do
        if type(key) ~= "string" or not SLOW_START_KEYS[key] then
            return nil, "slow_start: unknown field " .. tostring(key)
        end
    end
    if not is_number(raw.window, 1, _M.MAX_WINDOW) then
        return nil, "slow_start.window: must be a number of seconds from 1 to " .. _M.MAX_WINDOW
    end
    if not is_number(raw.min_weight, 0, 1) or raw.min_weight == 0 then
        return nil, "slow_start.min_weight: must be a number above 0 and at most 1"
    end
    if not is_number(raw.aggression, 0, _M.MAX_AGGRESSION) or raw.aggression == 0 then
        return nil, "slow_start.aggression: must be a number above 0 and at most " .. _M.MAX_AGGRESSION
    end
    return { window = raw.window, min_weight = raw.min_weight, aggression = raw.aggression }
end

local function number_text(value)
    if value == math.floor(value) then
        return string.format("%d", value)
    end
    return string.format("%.17g", value)
end

-- Fixed key order and number formatting: equal states give equal bytes,
-- which is what lets the daemon skip an unchanged GET /upstreams cheaply.
local function encode_server(s)
    -- "added" only when present, so documents without traffic options keep their bytes.
    return string.format(
        '{"host":%s,"port":%d,"weight":%d,"max_fails":%d,"fail_timeout":%s,"backup":%s,"down":%s%s}',
        cjson.encode(s.host), s.port, s.weight, s.max_fails, number_text(s.fail_timeout),
        tostring(s.backup), tostring(s.down),
        s.added and ',"added":' .. number_text(s.added) or "")
end

--- Encode a normalised upstream ({servers = {...}}) as its canonical JSON.
function _M.encode(upstream)
    local parts = {}
    for i, server in ipairs(upstream.servers) do
        parts[i] = encode_server(server)
    end
    local options = ""
    local slow = upstream.slow_start
    if slow then
        options = options .. string.format(',"slow_start":{"window":%s,"min_weight":%s,"aggression":%s}',
            number_text(slow.window), number_text(slow.min_weight), number_text(slow.aggression))
    end
    if upstream.panic_threshold then
        options = options .. ',"panic_threshold":' .. number_text(upstream.panic_threshold)
    end
    return string.format('{"version":%d%s,"servers":[%s]}', _M.FORMAT_VERSION, options,
        table.concat(parts, ","))
end

--- Parse and validate an update body. Returns the normalised upstream, or nil and an error.
function _M.decode(body)
    local doc, err = cjson.decode(body)
    if doc == nil then
        return nil, "body is not valid JSON: " .. tostring(err)
    end
    if type(doc) ~= "table" or is_array(doc) and next(doc) ~= nil then
        return nil, "body must be a JSON object"
    end
    for key in pairs(doc) do
        if type(key) ~= "string" or not DOC_KEYS[key] then
            return nil, "unknown field " .. tostring(key)
        end
    end
    if doc.version ~= _M.FORMAT_VERSION then
        return nil, "version: must be " .. _M.FORMAT_VERSION
    end
    if not is_array(doc.servers) then
        return nil, "servers: must be an array"
    end
    if #doc.servers > _M.MAX_SERVERS then
        return nil, "servers: at most " .. _M.MAX_SERVERS .. " servers"
    end
    local servers, primary, seen = {}, false, {}
    for i, raw in ipairs(doc.servers) do
        local server, server_err = check_server(i - 1, raw)
        if not server then
            return nil, server_err
        end
        local endpoint = server.host .. "|" .. server.port
        if seen[endpoint] then
            return nil, string.format("servers[%d]: %s port %d is listed twice", i - 1,
                server.host, server.port)
        end
        seen[endpoint] = true
        primary = primary or not server.backup
        servers[i] = server
    end
    if not primary then
        -- nginx refuses an upstream of backups only; so do we.
        return nil, "servers: at least one server must not be a backup"
    end
    local upstream = { servers = servers }
    if doc.slow_start ~= nil then
        local slow, slow_err = check_slow_start(doc.slow_start)
        if not slow then
            return nil, slow_err
        end
        upstream.slow_start = slow
    end
    if doc.panic_threshold ~= nil then
        if not is_number(doc.panic_threshold, 0, 1) then
            return nil, "panic_threshold: must be a number from 0 to 1"
        end
        upstream.panic_threshold = doc.panic_threshold
    end
    return upstream
end

local COUNTER, NAMES = "rev", "n"

-- "p:NAME" keys by name, so the balancer's per-request read builds no string.
local pointer_keys = setmetatable({}, { __mode = "k" })

local function pointer_key(name)
    local key = pointer_keys[name]
    if key == nil then
        key = "p:" .. name
        pointer_keys[name] = key
    end
    return key
end

local function document_key(name, revision)
    return string.format("s:%s:%d", name, revision)
end

-- A new revision, never handed out before (the counter is never evicted).
local function next_revision(shm)
    local revision = shm:incr(COUNTER, 1)
    if revision then
        return revision
    end
    -- First use: create the counter without evicting anything. "exists"
    -- means another worker created it meanwhile.
    local ok, err = shm:safe_add(COUNTER, 0)
    if not ok and err ~= "exists" then
        return nil, "cannot create the revision counter: " .. tostring(err)
    end
    return shm:incr(COUNTER, 1)
end

--- The current revision and canonical JSON of an upstream (nil, nil when there is none).
function _M.current(name)
    local shm = dict()
    local key = pointer_key(name)
    -- A concurrent update may free the document between the two reads; the
    -- pointer has moved on by then, so read again.
    for _ = 1, 3 do
        local revision = shm:get(key)
        if revision == nil then
            return nil, nil
        end
        local text = shm:get(document_key(name, revision))
        if text ~= nil or shm:get(key) == revision then
            return revision, text
        end
    end
    return nil, nil
end

-- Claim a slot for a new name: pointer created with revision 0 (no document
-- yet, which readers treat like "never posted"), within MAX_UPSTREAMS.
local function claim(shm, name)
    local ok, err = shm:safe_add(pointer_key(name), 0)
    if not ok then
        if err == "exists" then
            return true
        end
        return nil, 507, "cannot store the upstream: " .. tostring(err)
    end
    local count = shm:incr(NAMES, 1)
    if count == nil then
        local added, add_err = shm:safe_add(NAMES, 0)
        if not added and add_err ~= "exists" then
            shm:delete(pointer_key(name))
            return nil, 507, "cannot store the upstream: " .. tostring(add_err)
        end
        count = shm:incr(NAMES, 1)
    end
    if count > _M.MAX_UPSTREAMS then
        shm:incr(NAMES, -1)
        shm:delete(pointer_key(name))
        return nil, 409, string.format("at most %d upstreams can be stored; DELETE one first", _M.MAX_UPSTREAMS)
    end
    return "created"
end

--- Store a normalised upstream.
-- Returns the revision and whether it changed, or nil, an HTTP status and an error.
function _M.put(name, upstream)
    local shm = dict()
    local text = _M.encode(upstream)
    local old_revision, old_text = _M.current(name)
    if old_text == text then
        return old_revision, false
    end
    local created = false
    if old_revision == nil then
        local claimed, status, claim_err = claim(shm, name)
        if not claimed then
            return nil, status, claim_err
        end
        created = claimed == "created"
    end
    -- A refused first POST gives its slot back, so it leaves nothing behind.
    local function refuse(message)
        if created then
            shm:delete(pointer_key(name))
            shm:incr(NAMES, -1)
        end
        return nil, 507, message
    end
    local revision, rev_err = next_revision(shm)
    if not revision then
        return refuse(rev_err)
    end
    -- Allocate first: nothing of the old state is touched until this worked.
    local ok, err = shm:safe_set(document_key(name, revision), text)
    if not ok then
        return refuse("cannot store the upstream: " .. tostring(err))
    end
    -- The pointer exists (claim) and holds a number: this updates it in place.
    ok, err = shm:safe_set(pointer_key(name), revision)
    if not ok then
        shm:delete(document_key(name, revision))
        return refuse("cannot switch the upstream: " .. tostring(err))
    end
    if old_revision and old_revision > 0 then
        shm:delete(document_key(name, old_revision))
    end
    return revision, true
end

--- Forget an upstream (the balancer falls back to the file's servers). Returns true if it existed.
function _M.delete(name)
    local shm = dict()
    local revision = shm:get(pointer_key(name))
    if revision == nil then
        return false
    end
    -- The pointer goes first: no reader can follow it to a freed document.
    shm:delete(pointer_key(name))
    shm:incr(NAMES, -1)
    if revision > 0 then
        shm:delete(document_key(name, revision))
    end
    return revision > 0
end

--- The canonical JSON of one upstream, or nil.
function _M.get(name)
    local _, text = _M.current(name)
    return text
end

--- The current revision of an upstream (nil until it is first stored, and after a DELETE).
function _M.revision(name)
    return dict():get(pointer_key(name))
end

-- "x:NAME": when a worker last balanced NAME in panic (see reloader_balancer).
local PANIC_PREFIX = "x:"
-- A mark older than this (seconds) means the upstream has left panic.
_M.PANIC_FRESH = 2

--- Note that a worker balances ``name`` in panic now (a failed write only loses the mark).
function _M.mark_panic(name, now)
    dict():safe_set(PANIC_PREFIX .. name, now)
end

--- {"version":1,"panic":{NAME:true,...}}: the upstreams some worker balanced in panic within PANIC_FRESH s.
function _M.panics()
    local shm = dict()
    local now = ngx.now()
    local names = {}
    for _, key in ipairs(shm:get_keys(0)) do
        if key:sub(1, 2) == PANIC_PREFIX then
            local at = shm:get(key)
            if at and now - at < _M.PANIC_FRESH then
                names[#names + 1] = key:sub(3)
            end
        end
    end
    table.sort(names)
    local parts = {}
    for i, name in ipairs(names) do
        parts[i] = cjson.encode(name) .. ":true"
    end
    return string.format('{"version":%d,"panic":{%s}}', _M.FORMAT_VERSION, table.concat(parts, ","))
end

--- Every stored upstream as one JSON document, names sorted (byte-stable).
function _M.all()
    local shm = dict()
    local names = {}
    for _, key in ipairs(shm:get_keys(0)) do
        if key:sub(1, 2) == "p:" then
            names[#names + 1] = key:sub(3)
        end
    end
    table.sort(names)
    local parts = {}
    for _, name in ipairs(names) do
        local text = _M.get(name)
        if text then
            parts[#parts + 1] = cjson.encode(name) .. ":" .. text
        end
    end
    return string.format('{"version":%d,"upstreams":{%s}}', _M.FORMAT_VERSION,
        table.concat(parts, ","))
end

return _M
