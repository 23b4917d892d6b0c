-- reloader_balancer: balancer_by_lua handler for the upstreams the daemon manages.
--
-- Guarantees:
--  * smooth weighted round robin, the algorithm of nginx's own round robin,
--    over the servers last POSTed for the upstream; "down" servers are never
--    picked; backup servers only when no primary server is usable;
--  * every worker checks the upstream's revision in the shared dict on each
--    request (one shared-dict read), so a change is seen on the very next
--    request, without a timer; local state is rebuilt only when it changed;
--  * passive health checks with max_fails / fail_timeout, counted per worker
--    (as nginx does for an upstream without "zone"): a server that failed
--    max_fails times within fail_timeout is skipped for fail_timeout.
--    Failures are seen when nginx asks for the next peer after one (so they
--    are counted when proxy_next_upstream retries, which is the default for
--    "error" and "timeout");
--  * a failed attempt is retried on the next untried usable server, within
--    proxy_next_upstream_tries; when none is left the request gets 502.
--    The servers tried so far are read from $upstream_addr on a retry, so a
--    first attempt keeps no per-request state at all;
--  * slow start (the document's "slow_start" and each server's "added"):
--    a server added less than "window" seconds ago gets Envoy's weight
--    weight * max(min_weight, time_factor ^ (1 / aggression)),
--    time_factor = max(now - added, 1) / window, recomputed at most every
--    RAMP_EVERY seconds while some server ramps; nothing at all once every
--    ramp is over;
--  * panic threshold (the document's "panic_threshold"): when fewer than
--    that share of the primary servers that are not down pass the passive
--    checks and no backup server passes them, the checks are ignored and
--    the request goes to any server not yet tried (primaries first, then
--    backups). The count runs only within fail_timeout of
--    a failure. Each worker logs entering and leaving panic (at most one
--    line per PANIC_LOG_EVERY seconds per upstream) and marks the upstream
--    in the shared dict (read by GET /panic) at most once a second;
--  * while nothing was POSTed for the upstream (the shared dict is empty
--    right after an nginx start) or it was DELETEd, no peer is set, and
--    nginx's own round robin serves the servers listed in the upstream file.

local ngx_balancer = require "ngx.balancer"
local get_last_failure = ngx_balancer.get_last_failure
local set_current_peer = ngx_balancer.set_current_peer
local set_more_tries = ngx_balancer.set_more_tries
local store = require "reloader_store"
local cjson = require("cjson.safe").new()

local _M = {}

-- nginx's NGX_BUSY: the balancer's "no live upstreams", which nginx answers
-- with 502 like its own round robin does (ngx.exit(502) would give 500).
local NGX_BUSY = -3

-- Per-worker state by upstream name: { revision, primary, backup, usable }.
-- A Lua module table lives in each worker's own VM; nothing is shared here.
local states = {}

-- Seconds between two recomputations of the ramping weights (ngx.now() moves in ms).
local RAMP_EVERY = 0.05
local PANIC_LOG_EVERY = 10
local max, min = math.max, math.min

-- The (empty, never written) tried-set of a first attempt.
local NONE_TRIED = setmetatable({}, { __newindex = function() error("NONE_TRIED is read-only") end })

local function peer_key(server)
    return server.host .. "|" .. server.port
end

local function build(name, old)
    -- The revision and the document are read together, so the state is
    -- labelled with the revision it really is.
    local revision, text = store.current(name)
    if not text then
        return { revision = revision, deleted = true }
    end
    local doc = cjson.decode(text)
    local previous = {}
    if old and old.all then
        for _, peer in ipairs(old.all) do
            previous[peer.key] = peer
        end
    end
    local state = {
        revision = revision, primary = {}, backup = {}, all = {}, by_name = {}, extra_tries = 0,
        slow = doc.slow_start, ramping = nil, ramp_until = 0, ramp_at = -math.huge,
        panic_threshold = doc.panic_threshold, tripped_until = 0,
        -- Panic state is per worker; kept across revisions of the same upstream.
        panic = old and old.panic or false, panic_logged = old and old.panic_logged or -math.huge,
        panic_marked = -math.huge,
    }
    for _, server in ipairs(doc.servers) do
        local family = store.ip_family(server.host)
        if family == nil then
            -- set_current_peer takes addresses only: nginx cannot resolve in this phase.
            ngx.log(ngx.ERR, "upstream ", name, ": skipping ", server.host,
                ": the Lua balancer connects to IP addresses only")
        else
            local key = peer_key(server)
            local before = previous[key]
            local peer = {
                key = key,
                host = family == "ipv6" and "[" .. server.host .. "]" or server.host,
                port = server.port,
                weight = server.weight,
                base = server.weight,
                added = server.added,
                max_fails = server.max_fails,
                fail_timeout = server.fail_timeout,
                down = server.down,
                -- Keep the failure record of a server that stays in the set.
                fails = before and before.fails or 0,
                failed_at = before and before.failed_at or 0,
                current = 0,
            }
            local list = server.backup and state.backup or state.primary
            list[#list + 1] = peer
            state.all[#state.all + 1] = peer
            -- The name nginx shows in $upstream_addr.
            state.by_name[peer.host .. ":" .. peer.port] = peer
            if not peer.down then
                state.extra_tries = state.extra_tries + 1
            end
            if state.slow and peer.added then
                local done = peer.added + state.slow.window
                if done > state.ramp_until then
                    state.ramp_until = done
                end
                state.ramping = state.ramping or {}
                state.ramping[#state.ramping + 1] = peer
            end
            if peer.fails >= peer.max_fails and peer.max_fails > 0 then
                state.tripped_until = max(state.tripped_until, peer.failed_at + peer.fail_timeout)
            end
        end
    end
    -- One try per server that is not down; the first is nginx's own.
    state.extra_tries = math.max(state.extra_tries - 1, 0)
    -- nginx ignores failures of the only server of an upstream without backups.
    state.single = #state.primary == 1 and #state.backup == 0
    return state
end

-- Envoy's slow-start weights of the ramping peers at ``now`` (full weights once the window is over).
local function ramp(state, now)
    local slow = state.slow
    local window, low, exponent = slow.window, slow.min_weight, 1 / slow.aggression
    for _, peer in ipairs(state.ramping) do
        local elapsed = now - peer.added
        if elapsed >= window then
            peer.weight = peer.base
        else
            local factor = max(low, (max(elapsed, 1) / window) ^ exponent)
            peer.weight = peer.base * min(factor, 1)
        end
    end
    state.ramp_at = now
    if now >= state.ramp_until then
        state.ramping = nil -- every ramp is over: nothing more to do per request
    end
end

local function usable(peer, tried, now, single, panic)
    if peer.down or tried[peer] then
        return false
    end
    if panic or single or peer.max_fails == 0 or peer.fails < peer.max_fails then
        return true
    end
    return now - peer.failed_at >= peer.fail_timeout
end

-- Smooth weighted round robin among the usable peers of one list.
local function pick(peers, tried, now, single, panic)
    local best, total = nil, 0
    for i = 1, #peers do
        local peer = peers[i]
        if usable(peer, tried, now, single, panic) then
            peer.current = peer.current + peer.weight
            total = total + peer.weight
            if best == nil or peer.current > best.current then
                best = peer
            end
        end
    end
    if best then
        best.current = best.current - total
    end
    return best
end

-- Panic: fewer than panic_threshold of the primary servers not down pass
-- the passive checks, and no backup server passes them. (A healthy backup
-- takes the traffic instead, as nginx's backups do; Envoy likewise spills
-- to a lower priority before it panics.)
local function below_threshold(state, now)
    local total, healthy = 0, 0
    for _, peer in ipairs(state.primary) do
        if not peer.down then
            total = total + 1
            if usable(peer, NONE_TRIED, now, state.single, false) then
                healthy = healthy + 1
            end
        end
    end
    if total == 0 or healthy >= state.panic_threshold * total then
        return false
    end
    for _, peer in ipairs(state.backup) do
        if usable(peer, NONE_TRIED, now, state.single, false) then
            return false
        end
    end
    return true
end

local function set_panic(name, state, panic, now)
    if panic ~= state.panic then
        state.panic = panic
        if now - state.panic_logged >= PANIC_LOG_EVERY then
            state.panic_logged = now
            if panic then
                ngx.log(ngx.WARN, "upstream ", name, ": panic: fewer than ", state.panic_threshold * 100,
                    "% of its servers pass the passive checks; ignoring the checks")
            else
                ngx.log(ngx.WARN, "upstream ", name, ": left panic; passive checks apply again")
            end
        end
    end
    if panic and now - state.panic_marked >= 1 then
        state.panic_marked = now
        store.mark_panic(name, now)
    end
end

local function record_failure(peer, now, state)
    -- Failures count within a fail_timeout window, as nginx documents it.
    if now - peer.failed_at >= peer.fail_timeout and peer.fails < peer.max_fails then
        peer.fails = 0
    end
    peer.fails = peer.fails + 1
    peer.failed_at = now
    if peer.max_fails > 0 and peer.fails >= peer.max_fails then
        state.tripped_until = max(state.tripped_until, now + peer.fail_timeout)
    end
    if peer.max_fails > 0 and peer.fails == peer.max_fails then
        ngx.log(ngx.WARN, "upstream server ", peer.host, ":", peer.port,
            " failed ", peer.fails, " times; skipped for ", peer.fail_timeout, " s")
    end
end

--- The balancer_by_lua handler of upstream ``name`` (rendered into its file).
function _M.balance(name)
    local revision = store.revision(name)
    if revision == nil then
        return -- never POSTed: nginx's round robin over the file's servers
    end
    local state = states[name]
    if state == nil or state.revision ~= revision then
        state = build(name, state)
        states[name] = state
    end
    if state.deleted then
        return
    end

    local now = ngx.now()
    local tried, last
    local failure = get_last_failure()
    if failure == nil then
        -- First attempt, the common case: no tables, no ngx.ctx (which costs
        -- a table per request).
        tried = NONE_TRIED
        -- nginx allots one try per server of the file; allow one per server
        -- of the live set (capped by proxy_next_upstream_tries).
        if state.extra_tries > 0 then
            set_more_tries(state.extra_tries)
        end
    else
        -- A retry: $upstream_addr lists the peers tried so far, the last one last.
        tried = {}
        for addr in string.gmatch(ngx.var.upstream_addr or "", "[^%s,]+") do
            local peer = state.by_name[addr]
            if peer then
                tried[peer] = true
                last = peer
            end
        end
        if failure == "failed" and last then
            record_failure(last, now, state)
        end
    end

    if state.ramping and now - state.ramp_at >= RAMP_EVERY then
        ramp(state, now)
    end
    local panic = false
    if state.panic_threshold then
        -- Counting is only needed while some server may be failed.
        panic = now < state.tripped_until and below_threshold(state, now)
        if panic or state.panic then
            set_panic(name, state, panic, now)
        end
    end

    local peer = pick(state.primary, tried, now, state.single, panic)
        or pick(state.backup, tried, now, state.single, panic)
    if peer == nil then
        if failure == nil then
            ngx.log(ngx.ERR, "upstream ", name, ": no usable server")
        end
        return ngx.exit(NGX_BUSY)
    end
    local ok, err = set_current_peer(peer.host, peer.port)
    if not ok then
        ngx.log(ngx.ERR, "upstream ", name, ": cannot use ", peer.host, ":", peer.port, ": ", err)
        return ngx.exit(500)
    end
end

return _M
