# Node roles: one module each, chosen by name in node.json ("role"). A role is a
# sample source (CHANNELS, read()) that also offers commands (COMMANDS, command())
# and watches its inputs between sampling rounds (poll(), which may send events).
# Its hardware comes from the HAL: real drivers on a board, emulations on the unix port.
