# Helpers shared by the services' CMakeLists.

# connecting_embed_migrations(<target> <namespace> <dir>)
# Compiles every <dir>/NNNN_name.sql and <dir>/R__name.sql (repeatable; see
# libs/db/migrations.h) into <target> as
#   std::vector<connecting::db::Migration> <namespace>::SqlMigrations();
# so a service binary carries its schema (one file in a container image).
function(connecting_embed_migrations target ns dir)
  file(GLOB sql_files CONFIGURE_DEPENDS "${dir}/*.sql")
  list(SORT sql_files)
  # The files are read here, at configure time: an edited one must configure again.
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${sql_files})
  string(REPLACE "::" "_" ns_file "${ns}")
  set(out "${CMAKE_CURRENT_BINARY_DIR}/${ns_file}_migrations.cc")
  set(body "// Generated from ${dir} by cmake/Connecting.cmake. Do not edit.\n")
  string(APPEND body "#include \"libs/db/migrations.h\"\n\nnamespace ${ns} {\n\n")
  string(APPEND body "std::vector<connecting::db::Migration> SqlMigrations() {\n  return {\n")
  foreach(f IN LISTS sql_files)
    get_filename_component(name "${f}" NAME_WE)
    file(READ "${f}" sql)
    string(APPEND body "    {\"${name}\", R\"connecting_sql(${sql})connecting_sql\"},\n")
  endforeach()
  string(APPEND body "  };\n}\n\n}  // namespace ${ns}\n")
  file(CONFIGURE OUTPUT "${out}" CONTENT "${body}" @ONLY)
  target_sources(${target} PRIVATE "${out}")
endfunction()
