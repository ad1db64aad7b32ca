//! Finds a node's connection capacity, drives Socket.IO chat traffic, and checks nothing is lost.
