/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Socket-level service load balancing: translate a connect() (TCP, or
 * connected UDP) or a sendmsg() (unconnected UDP) to a service frontend
 * into one to a backend, once per socket or datagram, so established
 * traffic pays nothing per packet. recvmsg() and getpeername() translate
 * back, so the application sees the frontend it asked for.
 *
 * Attached to a cgroup2 directory (the node's subtree); only processes in
 * that subtree are translated.
 */
#include "lb4.h"

/* Return values of cgroup sock_addr programs. */
#define SYS_REJECT  0
#define SYS_PROCEED 1

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Remember which frontend this socket meant when it talks to `backend`. */
static __always_inline void
sock4_remember(struct bpf_sock_addr *ctx, const struct lb4_backend *backend,
	       __be32 address, __be16 port)
{
	struct lb4_reverse_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = backend->address,
		.port = backend->port,
	};
	struct lb4_reverse value = {
		.address = address,
		.port = port,
	};

	bpf_map_update_elem(&lb4_reverse_sk, &key, &value, BPF_ANY);
}

/*
 * Translate ctx's destination when it is a service frontend.
 * A frontend with no backend refuses at once.
 */
static __always_inline int sock4_xlate(struct bpf_sock_addr *ctx)
{
	__be32 address = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	__u8 proto = (__u8)ctx->protocol;
	struct lb4_service *svc;
	struct lb4_backend *backend = NULL;
	struct lb4_affinity_key affinity = {
		.address = address,
		.dport = port,
		.proto = proto,
	};
	__u64 now = 0;
	__u32 id = 0;

	svc = lb4_lookup_service(address, port, proto);
	if (!svc)
		return SYS_PROCEED;
	if (svc->count == 0)
		return SYS_REJECT;
	if (svc->flags & LB4_SVC_AFFINITY) {
		affinity.client = bpf_get_netns_cookie(ctx);
		now = bpf_ktime_get_ns();
		backend = lb4_affinity_backend(svc, &affinity, now);
	}
	if (!backend) {
		backend = lb4_select_backend(svc, &id);
		if (!backend)
			return SYS_REJECT;
		if (svc->flags & LB4_SVC_AFFINITY)
			lb4_affinity_update(&affinity, id, now);
	}
	sock4_remember(ctx, backend, address, port);
	ctx->user_ip4 = backend->address;
	ctx->user_port = backend->port;
	return SYS_PROCEED;
}

/* Show the frontend instead of the backend this socket was sent to. */
static __always_inline int sock4_reverse(struct bpf_sock_addr *ctx)
{
	struct lb4_reverse_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
	};
	struct lb4_reverse *frontend;

	frontend = bpf_map_lookup_elem(&lb4_reverse_sk, &key);
	if (frontend) {
		ctx->user_ip4 = frontend->address;
		ctx->user_port = frontend->port;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int berth_connect4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx);
}

SEC("cgroup/sendmsg4")
int berth_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_xlate(ctx);
}

SEC("cgroup/recvmsg4")
int berth_recvmsg4(struct bpf_sock_addr *ctx)
{
	return sock4_reverse(ctx);
}

SEC("cgroup/getpeername4")
int berth_getpeername4(struct bpf_sock_addr *ctx)
{
	return sock4_reverse(ctx);
}
