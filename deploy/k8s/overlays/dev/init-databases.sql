CREATE DATABASE scheduling;
