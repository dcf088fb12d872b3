package redis

import goredis "github.com/redis/go-redis/v9"

// The state of one lock key K under the prefix P lives in three Redis keys,
// which every script gets as KEYS[1..3]:
//
//	P q: K   list    the waiters, in queue order; each one when it queued
//	                 (Redis-time ms), "|", and its waiter record
//	P h: K   hash    the holders: lock id -> holder record
//	P m: K   hash    "limit" -> the key's Limit; "b:" id -> how often the
//	                 waiter id was overtaken by a higher priority; "c:" id
//	                 -> how often the owner of holder id re-entered it
//	                 (Owner, counted by its Locker); "q:" id -> when the
//	                 waiter id queued, while it is queued (the dedup of a
//	                 retried script; cancel rebuilds the entry from it); "P"
//	                 once a waiter asked with Preempt queued. It exists
//	                 while the key has a holder or a waiter: Stats finds the
//	                 live keys by it.
//
// and, shared by all keys of the prefix,
//
//	P t          string  the fencing-token counter (INCR): one per grant
//	P n          hash    what happened: "g0" the counter's start less one
//	                     (so the grants are P t less g0), x (expiries),
//	                     f(orced), p(reempted), s(ession lost); "w" i and "h" i
//	                     the counts of lmx.Stats's WaitTime and HoldTime
//	                     histograms, bucket i, "ws" and "hs" their sums
//	                     in ms
//	P s: SID     string  a session, kept alive by its Locker (PEXPIRE)
//	P d: K       string  while it lives (PX), K's lock-delay: nothing is
//	                     granted
//	P c: LID     channel a Locker's messages: "g|id|token|ttl|K" (granted),
//	                     "e|id|why" (ended: x expired, s session lost,
//	                     f forced, r released, p preempted), "v|id"
//	                     (revoked: make way for a preemptor), "l|id"
//	                     (look again: a preemption round started for the
//	                     waiter id, whose deadline it keeps)
//	P e          channel the events, for Watch: "what|id|token|ms|key",
//	                     what a (acquired), r (released), x, s, f, p as
//	                     above
//
// A waiter record is
// id|sid|locker|mode|ttl|kod|priority|delay|grace|np|owner (delay its
// LockDelay in ms, 0 for none; grace its Preempt in ms, -1 for none; kod
// and np "1" for KeepOnDisconnect and NoPreempt). A holder record is
// token|expires|since|preempt| followed by its waiter record without the
// id (expires, since and preempt in Redis-time milliseconds, expires 0 for
// none, preempt the deadline of a preemption round, 0 for none): a grant
// copies the request's fields as they are. A holder with kod "1" outlives
// its session. The owner comes last, so that it may hold "|".
//
// Preemption is the broker's: a queue's head asked with Preempt that does
// not fit sets a deadline, its grace from now, in the holders it needs
// gone (if none of them is NoPreempt or of its priority or higher), and
// their Lockers are told to revoke them. A holder whose deadline passes is
// reaped like an expired one (why "p"), by the head's own Locker, which
// looks again then. The deadlines are cleared when the head leaves the
// queue, granted or not.
//
// Every script first reaps the key's dead holders (expired, preempted, or
// whose session key is gone) and then grants the queue's head while it
// fits: so whoever next touches a key frees it from the dead and hands it
// on. The fast paths of acquireScript and releaseScript skip this where
// there is nothing to reap: an idle key, a request queueing behind a live
// sole holder, and a lease that is its key's only holder. The scripts
// touch keys they are not given (sessions, the counter): they need a
// single Redis, not a cluster.

// acquireScript queues a request and grants what fits. ARGV[4] is its
// waiter record, ARGV[5] its Limit, ARGV[6] "1" for a TryLock. It returns
// mine's reply, {'l'} when a TryLock found the key locked, {'m', limit}
// when the key lives with another Limit, or {'d'} when the request's
// session is dead.
//
// Its fast paths run before lib is even defined. The first grants a key
// that is idle (no holder, dead or alive, no waiter, no lock-delay) to a
// request whose session lives, before records too: any request fits an
// idle key, and its limit is the key's. The second queues an exclusive
// request behind the live exclusive sole holder of a key of Limit 1 (see
// there).
var acquireScript = goredis.NewScript(acquireLua)

var acquireLua = prologue + `
local rec, lim0, try = ARGV[4], ARGV[5], ARGV[6] == '1'
local rest = string.sub(rec, #self + 2)
local sid, ttl = string.match(rest, '^([^|]*)|[^|]*|[^|]*|([^|]*)|')
local sl = redis.call('PTTL', P .. 's:' .. sid)
if sl ~= -2 and redis.call('EXISTS', q, h, P .. 'd:' .. K) == 0 then
	local tok, exp = token(), 0
	if ttl ~= '0' then exp = t + tonumber(ttl) end
	redis.call('HSET', m, 'limit', lim0)
	redis.call('HSET', h, self, tok .. '|' .. d(exp) .. '|' .. d(t) .. '|0|' .. rest)
	event('a', self, tok)
	return {'g', tok, ttl}
end
` + records + `
-- A live exclusive request that queues behind the live exclusive holder of
-- a key of Limit 1 (that key's only holder, none to reap), asks for no
-- preemption and overtakes no waiter changes nothing but the queue: nothing
-- fits beside that holder, no lock-delay runs, and the only preemptor the
-- script may queue is the request. It queues before lib is even defined.
local me = sl ~= -2 and not try and lim0 == '1' and req({id = self}, rest)
if me and me.mode ~= 's' and me.grace < 0 then
	local all = redis.call('HGETALL', h)
	local x = #all == 2 and holder(all[1], all[2])
	if x and x.id ~= self and x.mode ~= 's' and (x.exp == 0 or x.exp > t) and (x.pdl == 0 or x.pdl > t) then
		local xl = -1 -- x's session's PTTL, -1 for none
		if x.kod ~= '1' then xl = redis.call('PTTL', P .. 's:' .. x.sid) end
		if xl ~= -2 and redis.call('HGET', m, 'limit') == '1' then
			local tail = redis.call('LINDEX', q, -1)
			if not tail or (redis.call('HEXISTS', m, 'q:' .. self) == 0 and waiter(tail).prio >= me.prio) then
				redis.call('RPUSH', q, d(t) .. '|' .. rec)
				redis.call('HSET', m, 'q:' .. self, d(t))
				-- When x may end on its own: see wake.
				local wake = xl
				for _, at in ipairs({x.exp, x.pdl}) do
					if at > 0 and (wake < 0 or at - t < wake) then wake = at - t end
				end
				return {'w', wake}
			end
		end
	end
end
` + lib + `
lives[sid] = sl
if sl == -2 then return {'d'} end
local me = req({id = self}, rest)
local reaped = reap()
if reaped > 0 then grant() end
-- A request that holds or waits already (the script ran before, and the
-- client did not hear its reply) stays as it is.
if H[self] then return mine('') end
-- The limit is set while the key is live (tidy deletes it): a limit set
-- with the key idle is one the reap above has just made stale. A key with
-- holders has one: one HGET; a new key's is set with one HSETNX.
local have = nil
if next(H) ~= nil then have = redis.call('HGET', m, 'limit') end
if not have and redis.call('HSETNX', m, 'limit', lim0) == 0 then have = redis.call('HGET', m, 'limit') end
if have and have ~= lim0 then
	if next(H) ~= nil or redis.call('EXISTS', q) == 1 then return {'m', have} end
	redis.call('HSET', m, 'limit', lim0)
end
lim = tonumber(lim0)
-- A live exclusive holder of a key of Limit 1, with none reaped now, was
-- granted with no lock-delay running and has been the key's only holder
-- since: no lock-delay runs, as only a holder that ends unasked starts one.
if reaped == 0 and lim == 1 and ex == 1 then dl = -2 end
-- The only preemptor this script may queue is its own request.
if me.grace >= 0 then redis.call('HSET', m, 'P', '1') end
pre = pre or me.grace >= 0
local tail = redis.call('LINDEX', q, -1)
if not tail then -- nobody waits: granted if it fits
	if fits(me.mode) and not delayed() then
		hold(me)
		return mine('')
	end
	if try then return {'l'} end
	redis.call('RPUSH', q, d(t) .. '|' .. rec)
	redis.call('HSET', m, 'q:' .. self, d(t))
	preempt(me)
	return {'w', wake()}
end
if try then
	-- Granted now only if it fits and may overtake every waiter.
	local ok = fits(me.mode) and not delayed()
	local head = redis.call('LINDEX', q, 0)
	if ok and head then
		local w = waiter(head)
		ok = w.prio < me.prio and tonumber(redis.call('HGET', m, 'b:' .. w.id) or '0') < maxBypass
	end
	if not ok then return {'l'} end -- the key has waiters: it stays
	for _, r in ipairs(redis.call('LRANGE', q, 0, -1)) do
		redis.call('HINCRBY', m, 'b:' .. waiter(r).id, 1)
	end
	hold(me)
	return mine('')
end
if redis.call('HEXISTS', m, 'q:' .. self) == 1 then return {'w', wake()} end
-- Queue behind every waiter of its priority or higher, and behind any
-- overtaken maxBypass times; count a bypass for those it overtakes.
local at, head, r = 0, false, tail
while true do
	if at > 0 then r = redis.call('LINDEX', q, -1 - at) end
	if not r then
		head = true
		break
	end
	local w = waiter(r)
	if w.prio >= me.prio or tonumber(redis.call('HGET', m, 'b:' .. w.id) or '0') >= maxBypass then break end
	at = at + 1
end
local e = d(t) .. '|' .. rec
if at == 0 then
	redis.call('RPUSH', q, e)
else
	for _, r in ipairs(redis.call('LRANGE', q, -at, -1)) do
		redis.call('HINCRBY', m, 'b:' .. waiter(r).id, 1)
	end
	if head then
		redis.call('LPUSH', q, e)
	else
		redis.call('LINSERT', q, 'BEFORE', redis.call('LINDEX', q, -at), e)
	end
end
redis.call('HSET', m, 'q:' .. self, d(t))
grant()
if H[self] then return mine('') end
return {'w', wake()}
`

// pokeScript reaps and grants, then reports on the caller's request, whose
// waiter record is ARGV[4]: what a waiter does when it looks again.
var pokeScript = goredis.NewScript(prologue + records + lib + `
reap()
grant()
tidy()
return mine(ARGV[4])
`)

// cancelScript takes back a request, waiter record ARGV[4]: out of the
// queue, or, if it was granted meanwhile, out of the holders, and hands the
// key on.
var cancelScript = goredis.NewScript(prologue + records + lib + `
done[self] = true
-- Its entry in the queue, if it waits: when it queued, then its record.
local qt = ARGV[4] ~= '' and redis.call('HGET', m, 'q:' .. self)
local e = qt and qt .. '|' .. ARGV[4]
local head = e and redis.call('LINDEX', q, 0) == e
if e then redis.call('LREM', q, 0, e) end
redis.call('HDEL', m, 'b:' .. self, 'q:' .. self)
reap()
if head and waiter(e).grace >= 0 then unpreempt() end
local x = drop(self)
if x then event('r', self, x.tok) end
grant()
tidy()
return 1
`)

// releaseScript ends the lease self. ARGV[4] is why, told to its Locker:
// "" (its own Unlock: nobody is told), "r" (Release), "x" (its own
// Locker's TTL timer ran out: counted, not told). It returns 1 when it
// ended the lease, 0 when there was none, or the reason the lease had
// already ended with ('x' or 's': reaped now).
//
// Its fast path is its own Locker's Unlock (ARGV[4] "") of an exclusive
// lease of Limit 1 (ARGV[5] "1"), which is then the key's only holder: no
// other fits beside it, and it was granted once the dead ones were reaped.
// While it lives, it ends with no reap, with no grant when nobody waits,
// and, when the queue's head is a live exclusive request that asked for no
// preemption, and no preemptor may be queued, grants it before lib is even
// defined.
var releaseScript = goredis.NewScript(releaseLua)

var releaseLua = prologue + records + `
-- freed is the queue's head once the fast path has ended the lease.
local freed = false
if ARGV[4] == '' and ARGV[5] == '1' then
	local r = redis.call('HGET', h, self)
	local x = r and holder(self, r)
	if x and (x.exp == 0 or x.exp > t) and (x.pdl == 0 or x.pdl > t) and
		(x.kod == '1' or redis.call('EXISTS', P .. 's:' .. x.sid) == 1) then
		redis.call('HDEL', h, self)
		observe('h', t - tonumber(x.since))
		event('r', self, x.tok)
		freed = redis.call('LINDEX', q, 0)
		if not freed then
			redis.call('DEL', m)
			return 1
		end
		if x.owner ~= '' then redis.call('HDEL', m, 'c:' .. self) end
		-- An exclusive head that lives, asked for no preemption and is no
		-- stale copy of self fits the key of Limit 1 that self leaves, and
		-- fills it: unless a preemptor may be queued, grant is done once it
		-- holds (see grant), and so is this script, with no lib.
		local w = waiter(freed)
		if w.mode ~= 's' and w.grace < 0 and w.id ~= self and
			redis.call('PTTL', P .. 's:' .. w.sid) ~= -2 and redis.call('HEXISTS', m, 'P') == 0 then
			redis.call('LPOP', q)
			redis.call('HDEL', m, 'b:' .. w.id, 'q:' .. w.id)
			give(w)
			observe('w', t - w.qt)
			return 1
		end
	end
end
` + lib + `
done[self] = true
if freed then
	-- No lock-delay runs: the lease was granted with none running, and
	-- only a holder that ends unasked starts one; it was the only holder.
	first, dl = freed, -2
	grant()
	tidy()
	return 1
end
reap()
local x = drop(self)
local res = gone[self] or 0
if x then
	res = 1
	if ARGV[4] == 'r' then tell(x.lid, 'e|' .. self .. '|r') end
	if ARGV[4] == 'x' then
		hush(x)
		count('x')
		event('x', self, x.tok)
	else
		event('r', self, x.tok)
	end
end
grant()
tidy()
return res
`

// extendScript makes the lease self expire ARGV[4] ms from now. It returns
// 1, or 0 when the lease is not held.
var extendScript = goredis.NewScript(prologue + records + lib + `
if reap() > 0 then grant() end
local x = H[self]
if not x then
	tidy()
	return 0
end
x.exp = t + tonumber(ARGV[4])
redis.call('HSET', h, self, hrec(x))
return 1
`)

// forceScript ends every lease of the key, telling their Lockers, and
// returns how many there were.
var forceScript = goredis.NewScript(prologue + records + lib + `
reap()
local n = 0
for id, x in pairs(H) do
	done[id] = true
	drop(id)
	hush(x)
	tell(x.lid, 'e|' .. id .. '|f')
	count('f')
	event('f', id, x.tok)
	n = n + 1
end
grant()
tidy()
return n
`)

// viewScript reaps and grants, then returns the key's limit, its holders
// (id, record pairs), its waiters, the Redis time and the re-entry counts
// (field, count pairs of the metadata hash).
var viewScript = goredis.NewScript(prologue + records + lib + `
reap()
grant()
tidy()
return {redis.call('HGET', m, 'limit') or '0', redis.call('HGETALL', h), redis.call('LRANGE', q, 0, -1), d(t),
	redis.call('HGETALL', m)}
`)

// countScript adds ARGV[4] to the re-entries of the holder self, and
// returns 1, or 0 when self holds nothing. It reaps nothing: a dead holder
// counted is dropped with its count by whoever reaps it.
var countScript = goredis.NewScript(`
local h, m, self = KEYS[2], KEYS[3], ARGV[3]
if redis.call('HEXISTS', h, self) == 0 then return 0 end
if redis.call('HINCRBY', m, 'c:' .. self, ARGV[4]) <= 0 then redis.call('HDEL', m, 'c:' .. self) end
return 1
`)
