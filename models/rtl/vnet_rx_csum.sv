// Receive checksum validation of the virtio-net function (VIRTIO_NET_F_GUEST_CSUM, 5.1.6.4 / NET-DEV-62).
//
// While run is high it reads the frame waiting in the receive buffer (frame byte 0 at buffer position HDR_LEN),
// W bytes a cycle through the buffer's read port (active: the port is this module's):
//   pass 1 takes the fixed fields in frame bytes 12..23: ethertype, IPv4 version/IHL, total length, fragment
//          bits, protocol;
//   pass 2, with the IPv4 header length known, sums the IPv4 header, the transport segment (from 14 + 4 * IHL to
//          14 + total length) and the pseudo-header addresses, and takes the UDP length and checksum fields.
// Then done (one cycle, held until run drops) with valid set only for an untagged IPv4 packet, not a fragment,
// whose header checksum and TCP or UDP checksum are correct (a UDP datagram without a checksum, checksum 0, is
// not vouched for). Everything else (IPv6, VLAN tags, other protocols, truncated packets) reads valid 0: the
// device never sets DATA_VALID on a packet it did not check (it may leave it clear on any packet).
// All ranges start at even frame offsets, so a byte at an even offset is the high byte of its 16-bit word.
module vnet_rx_csum #(
  parameter logic [31:0] W       = 8,   // bytes per beat
  parameter logic [31:0] PW      = 11,  // buffer position width
  parameter logic [31:0] HDR_LEN = 12,
  localparam logic [31:0] DATA_W = 8 * W
) (
  input  logic              clk,
  input  logic              rst_n,
  input  logic              run,      // the engine waits in its check state
  input  logic [PW:0]       len,      // frame length
  output logic [PW-1:0]     rd_base,  // the buffer's read port while active
  input  logic [DATA_W-1:0] rd_data,
  output logic              active,
  output logic              done,
  output logic              valid
);
  localparam logic [15:0] ETH_P_IP = 16'h0800;
  localparam logic [7:0]  PROTO_TCP = 8'd6;
  localparam logic [7:0]  PROTO_UDP = 8'd17;

  typedef enum logic [1:0] { V_IDLE, V_FIELDS, V_SUM, V_DONE } vstate_e;
  vstate_e     st;
  logic [PW:0] off;                 // frame offset of the beat being read
  logic [15:0] etype, tot_len, frag, udp_len, udp_csum;
  logic [7:0]  ver_ihl, proto;
  logic [31:0] ip_acc, l4_acc;

  logic [15:0] ihl4, l4_start, ip_end;
  assign ihl4     = 16'({ver_ihl[3:0], 2'b00});
  assign l4_start = 16'd14 + ihl4;
  assign ip_end   = 16'd14 + tot_len;
  assign rd_base  = PW'(off + (PW+1)'(HDR_LEN));
  assign active   = st == V_FIELDS || st == V_SUM;  // the read port is this module's
  assign done     = st == V_DONE;

  // this beat's bytes: the fixed fields (pass 1), the sums and the UDP fields (pass 2)
  logic [15:0] f_etype, f_tot_len, f_frag, f_udp_len, f_udp_csum;
  logic [7:0]  f_ver_ihl, f_proto;
  logic [31:0] ip_beat, l4_beat;
  always_comb begin
    f_etype = etype; f_tot_len = tot_len; f_frag = frag; f_ver_ihl = ver_ihl; f_proto = proto;
    f_udp_len = udp_len; f_udp_csum = udp_csum;
    ip_beat = '0; l4_beat = '0;
    for (int unsigned k = 0; k < W; k++) begin
      logic [15:0] o;
      logic [31:0] b;
      logic        in_frame;
      o        = 16'(off) + 16'(k);
      in_frame = 32'(off) + 32'(k) < 32'(len);
      b        = o[0] ? 32'(rd_data[8*k +: 8]) : 32'(rd_data[8*k +: 8]) << 8;
      if (in_frame) begin
        if (o == 16'd12) f_etype[15:8]   = rd_data[8*k +: 8];
        if (o == 16'd13) f_etype[7:0]    = rd_data[8*k +: 8];
        if (o == 16'd14) f_ver_ihl       = rd_data[8*k +: 8];
        if (o == 16'd16) f_tot_len[15:8] = rd_data[8*k +: 8];
        if (o == 16'd17) f_tot_len[7:0]  = rd_data[8*k +: 8];
        if (o == 16'd20) f_frag[15:8]    = rd_data[8*k +: 8];
        if (o == 16'd21) f_frag[7:0]     = rd_data[8*k +: 8];
        if (o == 16'd23) f_proto         = rd_data[8*k +: 8];
        if (o == l4_start + 16'd4) f_udp_len[15:8]  = rd_data[8*k +: 8];
        if (o == l4_start + 16'd5) f_udp_len[7:0]   = rd_data[8*k +: 8];
        if (o == l4_start + 16'd6) f_udp_csum[15:8] = rd_data[8*k +: 8];
        if (o == l4_start + 16'd7) f_udp_csum[7:0]  = rd_data[8*k +: 8];
        if (o >= 16'd14 && o < l4_start) ip_beat = ip_beat + b;
        if ((o >= l4_start && o < ip_end) || (o >= 16'd26 && o < 16'd34)) l4_beat = l4_beat + b;
      end
    end
  end

  // folded ones-complement sums; a correct checksum folds to 0xffff
  function automatic logic [15:0] fold(input logic [31:0] s);
    logic [16:0] a;
    a = 17'(s[15:0]) + 17'(s[31:16]);
    return a[15:0] + 16'(a[16]);
  endfunction

  logic        ip_ok, l4_ok;
  logic [15:0] l4_len;
  logic [31:0] l4_total;
  assign l4_len   = tot_len - ihl4;
  assign l4_total = l4_acc + 32'(proto) + 32'(l4_len);  // the pseudo header's protocol and length
  assign ip_ok = etype == ETH_P_IP && ver_ihl[7:4] == 4'd4 && ver_ihl[3:0] >= 4'd5 && tot_len >= ihl4
                 && 32'(ip_end) <= 32'(len) && (frag & 16'h3FFF) == 16'h0 && fold(ip_acc) == 16'hFFFF;
  always_comb begin
    l4_ok = 1'b0;
    if (proto == PROTO_TCP) l4_ok = l4_len >= 16'd20;
    if (proto == PROTO_UDP) l4_ok = l4_len >= 16'd8 && udp_len == l4_len && udp_csum != 16'h0;
  end

  logic last_beat;
  assign last_beat = 32'(off) + W >= 32'(len);

  always_ff @(posedge clk or negedge rst_n) begin
    if (!rst_n) begin
      st <= V_IDLE; off <= '0; etype <= '0; tot_len <= '0; frag <= '0; udp_len <= '0; udp_csum <= '0;
      ver_ihl <= '0; proto <= '0; ip_acc <= '0; l4_acc <= '0;
    end else if (!run) begin
      st <= V_IDLE;
    end else begin
      unique case (st)
        V_IDLE: begin
          st <= V_FIELDS; off <= '0;
          etype <= '0; ver_ihl <= '0; tot_len <= '0; frag <= '0; proto <= '0;
        end
        V_FIELDS: begin
          etype <= f_etype; ver_ihl <= f_ver_ihl; tot_len <= f_tot_len; frag <= f_frag; proto <= f_proto;
          off <= off + (PW+1)'(W);
          if (last_beat || 32'(off) + W > 32'd23) begin  // every fixed field lies in frame bytes 12..23
            st <= V_SUM; off <= '0; ip_acc <= '0; l4_acc <= '0; udp_len <= '0; udp_csum <= '0;
          end
        end
        V_SUM: begin
          ip_acc <= ip_acc + ip_beat; l4_acc <= l4_acc + l4_beat; udp_len <= f_udp_len; udp_csum <= f_udp_csum;
          off <= off + (PW+1)'(W);
          if (last_beat) st <= V_DONE;
        end
        V_DONE: ;  // until run drops
        default: st <= V_IDLE;
      endcase
    end
  end

  // the verdict, once pass 2 has ended (the engine samples it with done)
  assign valid = ip_ok && l4_ok && fold(l4_total) == 16'hFFFF;
endmodule
