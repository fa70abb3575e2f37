/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * IPv4 service load-balancing maps and lookups shared by Berth's programs.
 *
 * Layout (after Cilium's lb4 maps):
 *   lb4_services: (vip, port, proto, slot) -> lb4_service
 *       slot 0 is the service's master entry: `count` backend slots follow;
 *       slot 1..count hold one backend id each.
 *   lb4_backends: backend id -> lb4_backend (address, port)
 *   lb4_reverse_sk: (socket cookie, backend) -> frontend, for replies
 *   lb4_affinity: (client netns cookie, frontend) -> backend, for
 *       sessionAffinity ClientIP
 *
 * Writers fill backends, then slots, then the master entry, so a program
 * that sees a master entry always finds its slots.
 *
 * Every struct is shared with Rust (generated skeleton types): fields in
 * network order are typed __be*, padding is explicit.
 */
/*
 * The service and backend maps are preallocated: inserting 100 000 slots
 * then costs no allocation per entry (10 000 services program in a
 * fraction of the time), for memory fixed by their configured sizes.
 */
#ifndef BERTH_LB4_H
#define BERTH_LB4_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

/* A service frontend slot. */
struct lb4_key {
	__be32 address;      /* virtual IPv4 address */
	__be16 dport;        /* virtual port */
	__u16 backend_slot;  /* 0: master entry, 1..count: a backend slot */
	__u8 proto;          /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad[3];
};

/* Master entry flags. */
#define LB4_SVC_AFFINITY 0x1 /* sessionAffinity: ClientIP */
#define LB4_SVC_MAGLEV   0x2 /* flows hashed onto lb4_maglev (tc path) */

/* Master entry (slot 0) or one backend slot (slot > 0). */
struct lb4_service {
	__u32 backend_id;    /* slot > 0: key into lb4_backends;
			      * slot 0: affinity timeout in seconds */
	__u16 count;         /* slot 0: number of backend slots; else 0 */
	__u16 flags;         /* slot 0: LB4_SVC_* flags */
};

/* A real endpoint a frontend translates to. */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
	__uint(max_entries, 65536);
} lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, 65536);
} lb4_backends SEC(".maps");

/*
 * Maglev lookup table of a frontend (key: its master entry's key): entry
 * i holds the backend id for flows hashing to i. The agent computes it
 * from the backends' addresses alone, so every node holds the same table
 * and sends a given flow to the same backend.
 */
#define LB4_MAGLEV_SIZE 1021

struct lb4_maglev {
	__u32 backend_ids[LB4_MAGLEV_SIZE];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb4_maglev);
	__uint(max_entries, 1024);
} lb4_maglev SEC(".maps");

/*
 * Reverse translation for sockets: (socket cookie, backend address, port)
 * -> the frontend the socket asked for. recvmsg() and getpeername() then
 * show the frontend, not the backend, as the peer (UDP clients such as DNS
 * resolvers drop answers from an address they did not ask).
 */
struct lb4_reverse_key {
	__u64 cookie;
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct lb4_reverse {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_reverse_key);
	__type(value, struct lb4_reverse);
	__uint(max_entries, 262144);
} lb4_reverse_sk SEC(".maps");

/*
 * Session affinity: (client, frontend) -> the backend it was given and
 * when it last used it. At the socket layer the client is its network
 * namespace (a pod: all its processes share one), named by its cookie.
 */
struct lb4_affinity_key {
	__u64 client;        /* network namespace cookie */
	__be32 address;
	__be16 dport;
	__u8 proto;
	__u8 pad;
};

struct lb4_affinity {
	__u64 last_used_ns;  /* bpf_ktime_get_ns() of the last connect */
	__u32 backend_id;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb4_affinity);
	__uint(max_entries, 65536);
} lb4_affinity SEC(".maps");

/* The master entry of the service at (address, port, proto), or NULL. */
static __always_inline struct lb4_service *
lb4_lookup_service(__be32 address, __be16 port, __u8 proto)
{
	struct lb4_key key = {
		.address = address,
		.dport = port,
		.proto = proto,
	};

	return bpf_map_lookup_elem(&lb4_services, &key);
}

/*
 * Pick a backend of `svc` (a master entry for address/port/proto) at
 * random among its slots; its id goes to *id. NULL when the slot or
 * backend is missing.
 */
static __always_inline struct lb4_backend *
lb4_select_backend(const struct lb4_service *svc, __be32 address, __be16 port,
		   __u8 proto, __u32 *id)
{
	struct lb4_key key = {
		.address = address,
		.dport = port,
		.proto = proto,
	};
	struct lb4_service *slot;

	if (svc->count == 0)
		return NULL;
	key.backend_slot = (bpf_get_prandom_u32() % svc->count) + 1;
	slot = bpf_map_lookup_elem(&lb4_services, &key);
	if (!slot)
		return NULL;
	*id = slot->backend_id;
	return bpf_map_lookup_elem(&lb4_backends, &slot->backend_id);
}

/*
 * The backend of a Maglev frontend for a flow hashing to `hash`; its id
 * goes to *id. NULL when the table or backend is missing.
 */
static __always_inline struct lb4_backend *
lb4_maglev_backend(__be32 address, __be16 port, __u8 proto, __u32 hash, __u32 *id)
{
	struct lb4_key key = {
		.address = address,
		.dport = port,
		.proto = proto,
	};
	struct lb4_maglev *table;
	__u32 i = hash % LB4_MAGLEV_SIZE;

	table = bpf_map_lookup_elem(&lb4_maglev, &key);
	/* The verifier does not bound a remainder: keep clang from dropping
	 * the (always true) check that gives it the bound. */
	asm volatile("" : "+r"(i));
	if (!table || i >= LB4_MAGLEV_SIZE)
		return NULL;
	*id = table->backend_ids[i];
	return bpf_map_lookup_elem(&lb4_backends, id);
}

/*
 * The backend `client` was given for this frontend, while its affinity
 * (svc->backend_id seconds since the last use) holds and the backend
 * still exists; NULL otherwise. The agent removes entries pointing at
 * backends a service no longer has.
 */
static __always_inline struct lb4_backend *
lb4_affinity_backend(const struct lb4_service *svc,
		     const struct lb4_affinity_key *key, __u64 now)
{
	struct lb4_affinity *entry;

	entry = bpf_map_lookup_elem(&lb4_affinity, key);
	if (!entry)
		return NULL;
	if (now - entry->last_used_ns > (__u64)svc->backend_id * 1000000000ULL)
		return NULL;
	entry->last_used_ns = now;
	return bpf_map_lookup_elem(&lb4_backends, &entry->backend_id);
}

/* Remember that `client` was given backend `id`. */
static __always_inline void
lb4_affinity_update(const struct lb4_affinity_key *key, __u32 id, __u64 now)
{
	struct lb4_affinity entry = {
		.last_used_ns = now,
		.backend_id = id,
	};

	bpf_map_update_elem(&lb4_affinity, key, &entry, BPF_ANY);
}

#endif /* BERTH_LB4_H */
