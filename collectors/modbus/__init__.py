"""The Modbus collector: TCP, RTU and RTU over TCP devices, polled and written through pymodbus."""
