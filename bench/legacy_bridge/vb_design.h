// Design hooks of virtio_net_top for the native bridge (sim/rtl/harness/bridge.cpp).
//
// The bridge drives the bus ports every design of this shape has (s_axil_*, m_axi_*, s_axis_*,
// m_axis_*, irq_*); what it cannot know is when this design has nothing left to do, so that the
// clock can stop until a doorbell, a frame or a register access arrives, and which status ports
// a bridge log reports. The internal signals read here are made visible by virtio_net.vlt.
#pragma once

#include "Vvirtio_net_top.h"
#include "Vvirtio_net_top___024root.h"

using VbTop = Vvirtio_net_top;

// E_IDLE of vnet_ring_engine's estate_e
#define VB_ENGINE_IDLE 0

// True while the function has no work of its own: the ring engine waits in IDLE with no doorbell
// pending and no frame stored or streaming, and the register block has no reset and no interrupt
// request in progress. The bridge additionally waits for a few such cycles in a row (one-cycle
// pulses between the engine and the register block) and for its own bus models to be idle.
static inline bool vb_design_idle(VbTop* top) {
  auto* r = top->rootp;
  return r->virtio_net_top__DOT__u_engine__DOT__state == VB_ENGINE_IDLE
      && r->virtio_net_top__DOT__u_engine__DOT__kick_pend == 0
      && !r->virtio_net_top__DOT__u_engine__DOT__rx_full
      && !r->virtio_net_top__DOT__u_engine__DOT__tx_active
      && r->virtio_net_top__DOT__u_regs__DOT__irq_pending == 0
      && !r->virtio_net_top__DOT__u_regs__DOT__cfg_irq_pending
      && !r->virtio_net_top__DOT__u_regs__DOT__resetting
      && r->virtio_net_top__DOT__u_regs__DOT__qreset_req == 0
      && r->virtio_net_top__DOT__u_regs__DOT__link_q == top->link_up
      && !top->irq_valid;
}

// Status ports in the order sim/rtl/bridge.py's STATUS_FIELDS names them (after cycles and intx).
#define VB_DESIGN_STATUS_COUNT 9
static inline void vb_design_status(VbTop* top, uint64_t* out) {
  out[0] = top->device_status;
  out[1] = top->last_err_code;
  out[2] = top->last_err_queue;
  out[3] = top->err_count;
  out[4] = top->stat_tx_packets;
  out[5] = top->stat_tx_dropped;
  out[6] = top->stat_rx_packets;
  out[7] = top->stat_rx_no_buffer;
  out[8] = top->stat_rx_dropped;
}
