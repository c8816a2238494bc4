# How a node's radio joins it, on any HAL (firmware/hal_board.py, firmware/hal_unix.py): a `lora_bridge`
# keeps its serial line to the gateway and relays what the radio hears (firmware/roles/bridge.py); any
# other role's link to the gateway is the radio itself, class A (firmware/radio_port.py). node.json's
# keys: "sf" (7-12, the bridge's SF or the node's own), "power" (dBm), "channels" (the uplink channels its
# bridges listen on, Hz), "freq" (the bridge's channel).


def port(radio, config, uptime_ms, wait):
    # The node's UART stand-in: it needs only write, read_available and wait of it, which a RadioPort has
    from firmware.radio_port import RadioPort
    from protocols.lora import UPLINK_CHANNELS

    channels = tuple(config.get("channels") or ()) or UPLINK_CHANNELS
    return RadioPort(radio, uptime_ms, wait, config.get("sf", 9), config.get("power", 14), channels)


def bridge(radio, config):
    from firmware.roles.bridge import Bridge

    return Bridge(radio, config.get("freq", 868100000), config.get("sf", 9))
