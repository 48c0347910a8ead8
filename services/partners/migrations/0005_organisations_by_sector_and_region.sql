-- connecting:no-transaction
-- Organisations of one sector in one region ("acute trusts in London"), the
-- pair of filters a dashboard asks for most, in the listing's order. With an
-- index for each filter alone, a page walked one of them and checked the
-- other on every row: over 30,000 organisations in 8 sectors and 9 regions,
-- 808 index entries and rows read for a page of 50.
--
-- Run outside a transaction (libs/db/migrations.h): built CONCURRENTLY,
-- letting writes through.
CREATE INDEX CONCURRENTLY IF NOT EXISTS organisations_by_sector_and_region_in_name_order
  ON organisations (sector, region, name_lower, name, id);
